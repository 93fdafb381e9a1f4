"""What a person sees: the console (the only code that imports rich), plots and figures (plotext,
matplotlib: optional) and text coloured by surprise."""
