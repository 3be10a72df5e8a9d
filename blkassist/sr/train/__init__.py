"""Fine-tuning Real-ESRGAN on the artist's own scans."""
