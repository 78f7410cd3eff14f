"""Infrastructure shared by every process: settings, retries, the HTTP client."""
