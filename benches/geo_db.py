"""A GeoIP database shaped like GeoLite2-City for the load benchmark (benches/load.sh GEO=1).

    python geo_db.py OUT.mmdb [NETWORKS]

NETWORKS (default 50,000) IPv4 /20 networks spread over the address space, pointing at 2,000
city records with every field GeoLite2-City carries (names in eight languages, subdivisions,
postal code, registered country...), so that a lookup walks a tree as deep as a real
database's and decodes (and skips) records as large; 127.0.0.0/8, where dnsperf's queries come
from, is Amsterdam, and 198.51.96.0/20 (the load benchmark's client subnet) New York. Fixed seed: the same file every run. Needs PyPI's mmdb-writer (tests/run.sh
installs it into target/test-python).
"""
import random
import sys

from mmdb_writer import MMDBWriter
from netaddr import IPSet

LANGUAGES = ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]


def names(base):
    return {lang: f"{base} ({lang})" for lang in LANGUAGES}


def city_record(i, rng):
    lat, lon = rng.uniform(-60, 70), rng.uniform(-180, 180)
    continent = ["EU", "NA", "SA", "AS", "AF", "OC"][i % 6]
    country = f"C{i % 200:02d}"[:2].upper()
    return {
        "city": {"geoname_id": 1000000 + i, "names": names(f"City {i}")},
        "continent": {"code": continent, "geoname_id": 6255140 + i % 6, "names": names(continent)},
        "country": {"geoname_id": 2000000 + i % 200, "iso_code": country, "names": names(country)},
        "location": {"accuracy_radius": 20, "latitude": lat, "longitude": lon, "time_zone": "Europe/Amsterdam"},
        "postal": {"code": f"{10000 + i}"},
        "registered_country": {"geoname_id": 2000000 + i % 200, "iso_code": country, "names": names(country)},
        "subdivisions": [{"geoname_id": 3000000 + i, "iso_code": f"S{i % 50}", "names": names(f"Region {i}")}],
    }


def main():
    out = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 50000
    rng = random.Random(20)
    cities = [city_record(i, rng) for i in range(2000)]
    by_city = {}
    # /20 networks: 2^20 of them in IPv4; pick `count` distinct ones outside 127/8.
    picked = set()
    while len(picked) < count:
        n = rng.randrange(1 << 20)
        # 127/8 and 198.51.96.0/20 are placed below.
        if n >> 12 != 127 and n != (198 << 12 | 51 << 4 | 6):
            picked.add(n)
    for n in picked:
        first = n << 12
        network = f"{first >> 24}.{(first >> 16) & 255}.{(first >> 8) & 255}.0/20"
        by_city.setdefault(rng.randrange(len(cities)), []).append(network)
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    for city, networks in by_city.items():
        writer.insert_network(IPSet(networks), cities[city])
    amsterdam = dict(city_record(0, rng))
    amsterdam["location"] = {"accuracy_radius": 20, "latitude": 52.37, "longitude": 4.90, "time_zone": "Europe/Amsterdam"}
    writer.insert_network(IPSet(["127.0.0.0/8"]), amsterdam)
    new_york = dict(city_record(1, rng))
    new_york["location"] = {"accuracy_radius": 20, "latitude": 40.71, "longitude": -74.01, "time_zone": "America/New_York"}
    writer.insert_network(IPSet(["198.51.96.0/20"]), new_york)
    writer.to_db_file(out)


if __name__ == "__main__":
    main()
