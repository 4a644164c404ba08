from kgslb.cli import app

app()
