"""Counters behind `state` and `rate_limit`: what a call counts (`rules`), the rows (`store`), and
deciding and reserving calls on the proxy's store thread (`call_counters`)."""
