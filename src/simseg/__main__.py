from simseg.app.cli import entry

entry()
