"""The domain: tables, the catalogue, periods, the card, authorisation."""
