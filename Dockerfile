# The production image: gunicorn serves the web; the same image runs the scheduler.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APP_ENV=production

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY bot/ bot/
COPY handlers/ handlers/
COPY models/ models/
COPY scheduler/ scheduler/
COPY templates/ templates/
COPY migrations/ migrations/

RUN useradd --system --home /app czk && mkdir -p /app/instance && chown czk /app/instance
USER czk

EXPOSE 8000
# WeChat gives a callback 5 s; a worker stuck longer than that is of no use to anyone.
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "4", "--timeout", "30", \
     "--access-logfile", "-", "bot:create_app()"]
