from prometheus_client import Counter

USERS_CREATED = Counter("users_created", "Users created.")
