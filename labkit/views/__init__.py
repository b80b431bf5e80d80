"""What a person looks at: figures, the HTML report and the dashboard (see README.md)."""
