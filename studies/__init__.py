"""Research studies (the GLUE replication, initialisation and fine-tuning studies), run as scripts:
python studies/NAME.py. Results, plots and commands: studies/RESULTS.md."""
