"""The shipped reference fusion model, its data generator and its training code."""
