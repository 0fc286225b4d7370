from rma.cli import app

app()
