#!/usr/bin/env python3
"""Writes the domains' seed files (data/domains/*.jsonl), deterministically.

Each file holds one JSON record per line, in the shape of the domain's own
request (documented in README.md, "Data domains"):
  customers.jsonl     an `add` request: customer_id, name, email, addresses
                      (line1, city, postal_code, country, default), card (number, expiry)
  catalog.jsonl       a catalog item: sku, title, price_cents, weight_grams, status
  distributors.jsonl  a distributor: distributor_id, name, supplies [{sku, lead_time_days}]
`orderflow domains seed` loads them through the services. Rerun this script
only to change the data: python3 scripts/seed-data.py
"""
import json, random, pathlib

rng = random.Random(1998)
out = pathlib.Path(__file__).resolve().parent.parent / "data" / "domains"
out.mkdir(parents=True, exist_ok=True)

first = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken",
         "Radia", "Tim", "Leslie", "Shafi", "Niklaus", "Hedy", "Katherine", "Dennis", "Sophie", "Werner"]
last = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus", "Hamilton",
        "Thompson", "Perlman", "Berners-Lee", "Lamport", "Goldwasser", "Wirth", "Lamarr", "Johnson", "Ritchie"]
places = {
    "GB": [("London", "EC1A"), ("Leeds", "LS1"), ("York", "YO1"), ("Bristol", "BS1")],
    "DE": [("Berlin", "10115"), ("Hamburg", "20095"), ("Munich", "80331"), ("Cologne", "50667")],
    "US": [("Seattle", "98101"), ("Austin", "73301"), ("Boston", "02108"), ("Denver", "80202")],
}
streets = ["Main St", "High St", "Station Rd", "Hauptstrasse", "Church Lane", "Market Sq", "Pine Ave"]

with open(out / "customers.jsonl", "w") as f:
    for n in range(1, 2001):
        country = rng.choice(list(places))
        addresses = []
        for a in range(rng.choice([1, 1, 2, 3])):
            city, postcode = rng.choice(places[country])
            addresses.append({"line1": f"{rng.randint(1, 300)} {rng.choice(streets)}", "city": city,
                              "postal_code": postcode, "country": country, "default": a == 0})
        name = f"{rng.choice(first)} {rng.choice(last)}"
        customer = {"customer_id": f"C-{n:06d}", "name": name,
                    "email": f"{name.lower().replace(' ', '.')}.{n}@example.com", "addresses": addresses}
        if n % 4:
            customer["card"] = {"number": "4111111111111111", "expiry": f"{rng.randint(1, 12):02d}/{rng.randint(27, 32)}"}
        f.write(json.dumps(customer) + "\n")

nouns = ["Widget", "Gadget", "Sprocket", "Gizmo", "Bracket", "Flange", "Lamp", "Kettle", "Mug", "Cable"]
with open(out / "catalog.jsonl", "w") as f:
    for n in list(range(1, 501)) + [999]:
        sku = f"SKU-{n:04d}"
        # The price intake has always charged (workers::catalog::price_cents).
        item = {"sku": sku, "title": f"{rng.choice(nouns)} {n}", "price_cents": 499 + (n % 50) * 100,
                "weight_grams": rng.randint(50, 5000), "status": "active"}
        f.write(json.dumps(item) + "\n")
    # Few in stock (10 units each), each supplied by one distributor: backorders.
    for n in range(901, 906):
        item = {"sku": f"SKU-{n:04d}", "title": f"Backorder Widget {n}", "price_cents": 499 + (n % 50) * 100,
                "weight_grams": 400, "status": "active"}
        f.write(json.dumps(item) + "\n")

with open(out / "distributors.jsonl", "w") as f:
    for d, name in enumerate(["Acme Supply", "Northwind", "Globex", "Initech", "Umbrella Parts"], start=1):
        # Each supplies a fifth of the stocked SKUs and one of the few in stock
        # (SKU-0901..0905); nobody supplies SKU-0999.
        supplies = [{"sku": f"SKU-{n:04d}", "lead_time_days": rng.randint(1, 14)}
                    for n in range(d, 501, 5)]
        supplies.append({"sku": f"SKU-{900 + d:04d}", "lead_time_days": 1})
        f.write(json.dumps({"distributor_id": f"D-{d:02d}", "name": name, "supplies": supplies}) + "\n")
