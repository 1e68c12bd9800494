//! Message bodies: JSON or bincode 2 (`config::standard()`) of the same serde types, chosen by
//! the `Content-Type` header, with the schema version in `Weft-Schema`.

use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::json_objects::{ObjectsOnly, POSITIONAL};
use crate::text::{bound_quoted, error_line, quote};
use crate::SCHEMA_VERSION;

/// NATS header naming the body's encoding.
pub const HEADER_CONTENT_TYPE: &str = "Content-Type";
/// NATS header naming the schema version; absent means 1.
pub const HEADER_SCHEMA: &str = "Weft-Schema";
/// `Content-Type` of JSON bodies (also assumed when there are no headers).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `Content-Type` of bincode bodies.
pub const CONTENT_TYPE_BINCODE: &str = "application/x-bincode";
/// The largest body the agent decodes (the NATS server's `max_payload` may be lower).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// bincode's standard configuration, with a decode limit so that a garbage length prefix
/// cannot make the decoder allocate more than a body could hold. The limit does not change
/// the bytes: encoding uses the same configuration.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY_BYTES>()
}

/// A body encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    #[default]
    Json,
    Bincode,
}

impl Encoding {
    /// The `Content-Type` header value for this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => CONTENT_TYPE_JSON,
            Encoding::Bincode => CONTENT_TYPE_BINCODE,
        }
    }

    /// The encoding a `Content-Type` header names; absent means JSON. Parameters such as
    /// `; charset=utf-8` are ignored, and the media type is matched case-insensitively.
    pub fn from_content_type(value: Option<&str>) -> Result<Self, DecodeError> {
        let Some(value) = value else {
            return Ok(Encoding::Json);
        };
        let media = value.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
            Ok(Encoding::Json)
        } else if media.eq_ignore_ascii_case(CONTENT_TYPE_BINCODE) {
            Ok(Encoding::Bincode)
        } else {
            Err(DecodeError::ContentType(value.to_owned()))
        }
    }

    /// Encodes a value. Our types always serialize; a failure would be a bug in them.
    pub fn encode<T: Serialize>(self, value: &T) -> Vec<u8> {
        match self {
            Encoding::Json => serde_json::to_vec(value).expect("wire types serialize to JSON"),
            Encoding::Bincode => bincode::serde::encode_to_vec(value, bincode_config())
                .expect("wire types serialize to bincode"),
        }
    }

    /// Decodes a whole body; trailing bytes are an error. JSON objects must be objects:
    /// serde's derive would also take a positional array (`["web-1",7]`) for a struct, which
    /// skips every field-name check, so those are refused (during the one parse, see
    /// [`crate::json_objects`]).
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, DecodeError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(DecodeError::TooLarge(body.len()));
        }
        match self {
            Encoding::Json => {
                // One parse, straight into the typed value: no `serde_json::Value` of the
                // whole document, so peak memory is the body and what it decodes into.
                let mut de = serde_json::Deserializer::from_slice(body);
                let value =
                    serde_path_to_error::deserialize(ObjectsOnly(&mut de)).map_err(json_error)?;
                de.end().map_err(|source| DecodeError::Json {
                    path: String::new(),
                    source,
                })?;
                Ok(value)
            }
            Encoding::Bincode => {
                let (value, read) = bincode::serde::decode_from_slice(body, bincode_config())
                    .map_err(DecodeError::Bincode)?;
                if read != body.len() {
                    return Err(DecodeError::TrailingBytes(body.len() - read));
                }
                Ok(value)
            }
        }
    }
}

/// A JSON decoding error with its path, the keys in it bounded like quoted values (a body
/// can spell a key of a megabyte).
fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> DecodeError {
    use serde_path_to_error::Segment;
    let mut path = String::new();
    for segment in err.path() {
        match segment {
            Segment::Seq { index } => {
                let _ = write!(path, "[{index}]");
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                let quoted = quote(key);
                path.push_str(&quoted[1..quoted.len() - 1]);
            }
            Segment::Unknown => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push('?');
            }
        }
    }
    let source = err.into_inner();
    if source.to_string().starts_with(POSITIONAL) {
        return DecodeError::Positional(if path.is_empty() { ".".into() } else { path });
    }
    DecodeError::Json { path, source }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoding::Json => "json",
            Encoding::Bincode => "bincode",
        })
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Encoding::Json),
            "bincode" => Ok(Encoding::Bincode),
            other => Err(format!("{other:?} is not an encoding (json or bincode)")),
        }
    }
}

/// Checks the `Weft-Schema` header; absent means version 1.
pub fn check_schema_version(value: Option<&str>) -> Result<(), DecodeError> {
    match value {
        None => Ok(()),
        Some(v) if v.trim().parse::<u32>() == Ok(SCHEMA_VERSION) => Ok(()),
        Some(v) => Err(DecodeError::SchemaVersion(v.to_owned())),
    }
}

/// Reads a message: checks both headers, then decodes the body.
pub fn decode_message<T: DeserializeOwned>(
    content_type: Option<&str>,
    schema_version: Option<&str>,
    body: &[u8],
) -> Result<(Encoding, T), DecodeError> {
    check_schema_version(schema_version)?;
    let encoding = Encoding::from_content_type(content_type)?;
    Ok((encoding, encoding.decode(body)?))
}

/// Why a body was not decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported Content-Type {} (application/json or application/x-bincode)", quote(.0))]
    ContentType(String),
    #[error("unsupported Weft-Schema {} (this agent speaks {SCHEMA_VERSION})", quote(.0))]
    SchemaVersion(String),
    #[error("body of {0} bytes, at most {MAX_BODY_BYTES}")]
    TooLarge(usize),
    #[error("invalid JSON{}", if path.is_empty() { String::new() } else { format!(" at {path}") })]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid JSON at {0}: an object with field names is expected, not an array")]
    Positional(String),
    #[error("invalid bincode")]
    Bincode(#[source] bincode::error::DecodeError),
    #[error("{0} bytes after the bincode value")]
    TrailingBytes(usize),
}

impl DecodeError {
    /// The error and its causes on one line, for replies and statuses. Every value it quotes
    /// (a field name as the body spelled it, a string of the wrong type) is cut to its first
    /// 64 bytes and control characters are escaped: a body can spell a megabyte of `\n`.
    pub fn to_line(&self) -> String {
        bound_quoted(&error_line(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PodSpec;

    #[test]
    fn content_type_parameters_are_ignored() {
        assert_eq!(
            Encoding::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            Encoding::Json
        );
        assert_eq!(Encoding::from_content_type(None).unwrap(), Encoding::Json);
        assert!(Encoding::from_content_type(Some("text/plain")).is_err());
    }

    #[test]
    fn json_errors_name_the_field() {
        let body = br#"{"PodId":"a","Generation":1,"Firewall":{"Ingress":[{"Source":[]}]}}"#;
        let err = Encoding::Json
            .decode::<PodSpec>(body)
            .unwrap_err()
            .to_line();
        assert!(err.contains("Firewall.Ingress[0]"), "{err}");
        assert!(err.contains("unknown field `Source`"), "{err}");
    }

    #[test]
    fn error_lines_stay_one_line() {
        let body = br#"{"PodId":"a","Generation":1,"Sources\n\u0000":[]}"#;
        let err = Encoding::Json
            .decode::<PodSpec>(body)
            .unwrap_err()
            .to_line();
        assert!(!err.contains(char::is_control), "{err:?}");
        assert!(err.contains(r"unknown field `Sources\n\u{0}`"), "{err}");
    }

    #[test]
    fn hostile_names_are_quoted_short() {
        // A megabyte-long field name of control characters, as JSON escapes.
        let name = "\\u0001".repeat(1 << 18);
        let body = format!(r#"{{"PodId":"a","Generation":1,"Firewall":{{"{name}":[]}}}}"#);
        let line = Encoding::Json
            .decode::<PodSpec>(body.as_bytes())
            .unwrap_err()
            .to_line();
        assert!(line.len() < 1024, "{} bytes: {line}", line.len());
        assert!(!line.contains(char::is_control), "{line}");
        assert!(
            line.starts_with(r"invalid JSON at Firewall.\u{1}\u{1}"),
            "{line}"
        );

        // The same as a bincode interface name: decoded, then refused by validation.
        let spec = PodSpec {
            pod_id: "a".into(),
            generation: 1,
            not_after_unix: None,
            network: Some(crate::NetworkSpec {
                interface: "\u{1b}".repeat(1 << 20),
                address: "192.0.2.5/24".into(),
                gateway: None,
                address6: None,
                gateway6: None,
                mtu: None,
                nameservers: vec![],
                search_domains: vec![],
            }),
            firewall: None,
            wireguard: None,
        };
        let body = Encoding::Bincode.encode(&spec);
        assert!(body.len() > 1 << 20);
        let decoded: PodSpec = Encoding::Bincode.decode(&body).unwrap();
        let pod = crate::PodId::parse("a").unwrap();
        let errors = crate::ValidSpec::validate(&decoded, &pod)
            .unwrap_err()
            .to_string();
        assert!(errors.len() < 512, "{} bytes: {errors}", errors.len());
        assert!(
            errors.starts_with(r#"Network.Interface: "\u{1b}"#),
            "{errors}"
        );
        assert!(
            errors.contains(r#"..." is not an interface name"#),
            "{errors}"
        );
    }

    #[test]
    fn positional_arrays_are_not_objects() {
        let err = Encoding::Json.decode::<PodSpec>(br#"["web-1",1,null,null,null]"#);
        assert_eq!(
            err.unwrap_err().to_line(),
            "invalid JSON at .: an object with field names is expected, not an array"
        );
        let body =
            br#"{"PodId":"a","Generation":1,"Firewall":{"Ingress":[["tcp",["22"],[],null]]}}"#;
        assert_eq!(
            Encoding::Json.decode::<PodSpec>(body).unwrap_err().to_line(),
            "invalid JSON at Firewall.Ingress[0]: an object with field names is expected, not an array"
        );
        let body =
            br#"{"PodId":"a","Generation":1,"Network":["eth0","10.0.0.5/24",null,null,[],[]]}"#;
        assert!(Encoding::Json
            .decode::<PodSpec>(body)
            .unwrap_err()
            .to_line()
            .contains("at Network:"));
    }

    #[test]
    fn bincode_trailing_bytes_are_refused() {
        let spec = PodSpec {
            pod_id: "a".into(),
            generation: 1,
            not_after_unix: None,
            network: None,
            firewall: None,
            wireguard: None,
        };
        let mut body = Encoding::Bincode.encode(&spec);
        assert_eq!(Encoding::Bincode.decode::<PodSpec>(&body).unwrap(), spec);
        body.push(0);
        assert!(matches!(
            Encoding::Bincode.decode::<PodSpec>(&body),
            Err(DecodeError::TrailingBytes(1))
        ));
    }
}
