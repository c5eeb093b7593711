"""Small shared helpers: JSON-lines reading with line numbers, rejects files, atomic output
directories and files, progress bars, and logging that never prints report text."""
