"""Serving the app: uvicorn with connection limits, in the background, and the AWS Lambda handler."""
