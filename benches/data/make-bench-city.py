# Writes bench-city.mmdb, the GeoIP database of the `geo` Criterion bench (benches/answer.rs):
# run with Python and PyPI's mmdb-writer (tests/run.sh installs it into target/test-python).
#   target/test-python/bin/python benches/data/make-bench-city.py
from mmdb_writer import MMDBWriter
from netaddr import IPSet
import os

w = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
w.insert_network(IPSet(["198.51.100.0/24"]), {
    "location": {"latitude": 52.37, "longitude": 4.90},
    "country": {"iso_code": "NL"},
    "continent": {"code": "EU"},
})
w.to_db_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-city.mmdb"))
