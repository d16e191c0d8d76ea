"""The seed's order service in Flask: checks the user with a bare ``requests.get`` per order, with no
session and no timeout, as the design this project replaces did (bench's ``seed``)."""

import itertools
import os
import threading

import requests
from flask import Flask, abort, jsonify, request

app = Flask(__name__)
USER_SVC_URL = os.environ["USER_SVC_URL"]
orders: dict[int, dict[str, object]] = {}
ids = itertools.count(1)
lock = threading.Lock()


@app.post("/orders")
def create_order():
    body = request.get_json()
    if requests.get(f"{USER_SVC_URL}/users/{body['user_id']}").status_code != 200:
        abort(404)
    with lock:
        order = {"id": next(ids), "user_id": body["user_id"], "items": body["items"]}
        orders[order["id"]] = order
    return jsonify(order), 201


@app.get("/readyz")
def readyz():
    return jsonify(status="ok")
