"""unlearnflow: cached stages for targeted machine unlearning."""

__version__ = "0.1.0"
