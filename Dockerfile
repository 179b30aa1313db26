# The production image: gunicorn serves the web; the same image runs the scheduler.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APP_ENV=production

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY core/ core/
COPY wechat/ wechat/
COPY bot/ bot/
COPY handlers/ handlers/
COPY models/ models/
COPY scheduler/ scheduler/
COPY templates/ templates/
COPY migrations/ migrations/
COPY gunicorn.conf.py .

RUN useradd --system --home /app czk && mkdir -p /app/instance && chown czk /app/instance
USER czk

EXPOSE 8000
# Workers, gevent and timeouts: gunicorn.conf.py (WEB_CONCURRENCY sets the number of workers).
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--access-logfile", "-", "bot:create_app()"]
