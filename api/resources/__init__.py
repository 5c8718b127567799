"""One flask-smorest blueprint per resource; views parse, call one service, render."""
