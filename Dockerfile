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
# Threads (gthread): recordings that arrive together in a worker commit in one statement
# (models.scores.RecordingWriter), and a retry waiting for its twin's reply holds one thread, not a worker.
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "4", "--threads", "8", "--timeout", "30", \
     "--access-logfile", "-", "bot:create_app()"]
