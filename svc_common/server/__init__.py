"""How the services are served: gunicorn's configuration, its gevent worker, its log lines and error
answers."""
