"""Ready networks and solvers, and the generators that write them."""
