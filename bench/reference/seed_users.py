"""The seed's user service, written plainly in Flask: what this project replaces (bench's ``seed``)."""

import itertools
import threading

from flask import Flask, abort, jsonify, request

app = Flask(__name__)
users: dict[int, dict[str, object]] = {}
ids = itertools.count(1)
lock = threading.Lock()


@app.post("/users")
def create_user():
    body = request.get_json()
    with lock:
        user = {"id": next(ids), "name": body["name"], "email": body["email"]}
        users[user["id"]] = user
    return jsonify(user), 201


@app.get("/users/<int:user_id>")
def get_user(user_id: int):
    user = users.get(user_id)
    if user is None:
        abort(404)
    return jsonify(user)


@app.get("/readyz")
def readyz():
    return jsonify(status="ok")
