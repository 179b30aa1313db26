"""Values the domain decided (warning notices, digests, reminders) turned into messages through templates/."""
