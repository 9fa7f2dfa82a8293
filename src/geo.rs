//! Where a client is: the GeoIP database (MaxMind DB format, the GeoLite2-City / DB-IP City
//! Lite layout: `location.latitude`, `location.longitude`, `country.iso_code`,
//! `continent.code`), read with the `maxminddb` crate, and the points the geographic pick
//! policies compare. A lookup decodes borrowed fields only: no allocation per query.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// An opened database.
pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
    pub path: PathBuf,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb").field("path", &self.path).finish()
    }
}

/// What the database says about one client address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientPlace {
    /// Unit vector of the location, when the database has one.
    pub point: Option<[f32; 3]>,
    /// `country.iso_code` and `continent.code`, packed by `region_code` (0: none).
    pub country: u32,
    pub continent: u32,
    /// Prefix length of the database network that decided (of the address's own family).
    pub prefix: u8,
}

#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow)]
    country: Option<Code<'a>>,
    #[serde(borrow)]
    continent: Option<Code<'a>>,
    location: Option<Coordinates>,
}

#[derive(Deserialize)]
struct Code<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
    #[serde(borrow)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Coordinates {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

impl GeoDb {
    /// Opens and checks the database at `path`; the error names the file and the reason.
    pub fn open(path: &Path) -> Result<GeoDb, String> {
        let fail = |reason: String| format!("{}: {reason}", path.display());
        // A city database is some 100 MB; 2 GiB bounds a wrong path (a device, a huge file).
        let bytes = crate::file_set::read(path, 2 << 30)
            .map_err(|e| fail(format!("cannot read the GeoIP database: {e}")))?;
        let reader =
            maxminddb::Reader::from_source(bytes).map_err(|e| fail(format!("not a MaxMind DB file: {e}")))?;
        let kind = &reader.metadata().database_type;
        if kind.is_empty() {
            return Err(fail("the database names no type".into()));
        }
        Ok(GeoDb {
            reader,
            path: path.to_path_buf(),
        })
    }

    /// The database's type as its metadata names it (`GeoLite2-City`, `DBIP-City-Lite`...).
    pub fn kind(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Where `ip` is, as far as the database knows.
    pub fn locate(&self, ip: IpAddr) -> Option<ClientPlace> {
        let found = self.reader.lookup(ip).ok()?;
        let prefix = found.network().map_or(0, |n| n.prefix());
        let record: CityRecord<'_> = match found.decode() {
            Ok(Some(record)) => record,
            // Not in the database: the network that says so still decided.
            _ => {
                return Some(ClientPlace {
                    point: None,
                    country: 0,
                    continent: 0,
                    prefix,
                });
            }
        };
        let point = record
            .location
            .and_then(|l| Some(unit_vector(l.latitude? as f32, l.longitude? as f32)));
        Some(ClientPlace {
            point,
            country: record.country.and_then(|c| c.iso_code).map_or(0, region_code),
            continent: record.continent.and_then(|c| c.code).map_or(0, region_code),
            prefix,
        })
    }
}

/// The unit vector of a latitude and longitude in degrees: the closer two points on the
/// sphere, the larger their dot product (great-circle distance is its arc cosine).
pub fn unit_vector(latitude: f32, longitude: f32) -> [f32; 3] {
    let (lat, lon) = (latitude.to_radians(), longitude.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

/// A continent or country code (up to 4 ASCII letters, any case) packed for comparison.
pub fn region_code(text: &str) -> u32 {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|c| c.is_ascii_alphabetic()) {
        return 0;
    }
    text.bytes()
        .fold(0u32, |code, c| (code << 8) | u32::from(c.to_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearer_points_have_larger_dot_products() {
        let amsterdam = unit_vector(52.37, 4.90);
        let frankfurt = unit_vector(50.11, 8.68);
        let sydney = unit_vector(-33.87, 151.21);
        let dot = |a: [f32; 3], b: [f32; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
        assert!(dot(amsterdam, frankfurt) > dot(amsterdam, sydney));
        assert_eq!(region_code("eu"), region_code("EU"));
        assert_ne!(region_code("EU"), region_code("NA"));
        assert_eq!(region_code("e1"), 0);
    }
}
