from simseg.cli import entry

entry()
