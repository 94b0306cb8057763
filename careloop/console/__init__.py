"""The oversight console: a web page where people review replies, approve adapters and check the judges."""
