from reelgen.cli.main import app

app()
