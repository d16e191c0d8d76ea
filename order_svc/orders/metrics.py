from prometheus_client import Counter, Histogram

ORDERS_CREATED = Counter("orders_created", "Orders created.")
USER_CHECKS = Counter("user_check", "Checks that an order's user exists, by outcome.", ["outcome"])
USER_CHECK_DURATION = Histogram(
    "user_check_duration_seconds",
    "Time to learn whether a user exists, retries included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
USER_CHECK_RETRIES = Counter("user_check_retries", "Retried calls to the user service.")

for _outcome in ("found", "not_found", "unavailable"):
    USER_CHECKS.labels(_outcome)  # export every outcome at 0 so rate() works from the first scrape
