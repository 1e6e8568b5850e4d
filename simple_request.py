"""Post images to the gateway and print their top predictions (a thin entry point; the code is
image_gateway/client/, the same as the `gateway-client` command).

    python simple_request.py tests/data/cat.jpg [--url http://127.0.0.1:5000/predict]
"""
import sys

from image_gateway.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
