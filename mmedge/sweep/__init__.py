"""`mmedge sweep`: recipe variations searched on Ray, measured per device, reduced to fronts."""
