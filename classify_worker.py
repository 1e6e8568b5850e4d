"""A model worker process (a thin entry point; the code is image_gateway/worker/main.py).

    REDIS_URL=redis://127.0.0.1:6379/0 python classify_worker.py [--model NAME]
"""
from image_gateway.worker.main import main

if __name__ == "__main__":
    main()
