//! Metadata exchange JSON, version negotiation, headers, bearer tokens.

use sidekv_kvconnect::metadata::*;

const DB_ID: &str = "a1b2c3d4-e5f6-4a8b-9c1d-2e3f4a5b6c7d";

#[test]
fn parses_the_request_body() {
    assert_eq!(parse_metadata_request(br#"{"supportedVersions":[1,2,3]}"#).unwrap().supported_versions, vec![1, 2, 3]);
    // No body: a version-1-only client (spec).
    assert_eq!(parse_metadata_request(b"").unwrap().supported_versions, vec![1]);
    assert_eq!(parse_metadata_request(b" \n").unwrap().supported_versions, vec![1]);
    // Unknown fields are ignored, like denokv does.
    assert_eq!(parse_metadata_request(br#"{"supportedVersions":[2],"x":1}"#).unwrap().supported_versions, vec![2]);
    for bad in [&b"{"[..], b"[]", br#"{}"#, br#"{"supportedVersions":"3"}"#, br#"{"supportedVersions":[-1]}"#] {
        let err = parse_metadata_request(bad).unwrap_err();
        assert!(matches!(err, MetadataError::InvalidRequestBody(_)), "{err}");
        assert_eq!(err.http_status(), 400);
    }
    let err = parse_metadata_request(br#"{"versions":[3]}"#).unwrap_err();
    assert!(err.to_string().contains("missing field `supportedVersions`"), "{err}");
}

#[test]
fn negotiates_the_highest_common_version() {
    let server = SUPPORTED_VERSIONS;
    assert_eq!(negotiate_version(&[1, 2, 3], &server), Some(3));
    assert_eq!(negotiate_version(&[3, 1, 2], &server), Some(3));
    assert_eq!(negotiate_version(&[1, 2], &server), Some(2));
    assert_eq!(negotiate_version(&[1], &server), Some(1));
    assert_eq!(negotiate_version(&[1, 4, 7], &server), Some(1));
    assert_eq!(negotiate_version(&[4, 5], &server), None);
    assert_eq!(negotiate_version(&[], &server), None);
    assert_eq!(negotiate_version(&[1], &[2, 3]), None);
    assert_eq!(negotiate_version(&[1, 2, 3], &[2]), Some(2));

    let req = MetadataExchangeRequest { supported_versions: vec![1, 2, 3] };
    assert_eq!(negotiate(&req, &server).unwrap(), ProtocolVersion::V3);
    let err = negotiate(&MetadataExchangeRequest { supported_versions: vec![1] }, &[2, 3]).unwrap_err();
    assert_eq!(err.to_string(), "no common KV Connect protocol version: the client supports [1], this server supports [2, 3]");
    assert_eq!(err.http_status(), 400);
}

#[test]
fn version_properties() {
    assert_eq!(ProtocolVersion::V1.database_id_header(), "x-transaction-domain-id");
    assert_eq!(ProtocolVersion::V2.database_id_header(), "x-denokv-database-id");
    assert_eq!(ProtocolVersion::V3.database_id_header(), "x-denokv-database-id");
    assert!(!ProtocolVersion::V1.allows_relative_endpoint_urls());
    assert!(ProtocolVersion::V2.allows_relative_endpoint_urls());
    assert!(!ProtocolVersion::V2.uses_read_status() && ProtocolVersion::V3.uses_read_status());
    assert!(!ProtocolVersion::V2.supports_watch() && ProtocolVersion::V3.supports_watch());
    assert_eq!(ProtocolVersion::from_number(3).map(ProtocolVersion::number), Some(3));
    assert_eq!(ProtocolVersion::from_number(0), None);
}

#[test]
fn response_json_is_camel_case_with_exactly_the_schema_fields() {
    let m = DatabaseMetadata::new(ProtocolVersion::V3, DB_ID, "/kv/v3", "tok", 1_696_118_400_000);
    m.validate().unwrap();
    assert_eq!(
        m.to_json(),
        format!(
            r#"{{"version":3,"databaseId":"{DB_ID}","endpoints":[{{"url":"/kv/v3","consistency":"strong"}}],"token":"tok","expiresAt":"2023-10-01T00:00:00Z"}}"#
        )
    );
    let back: DatabaseMetadata = serde_json::from_str(&m.to_json()).unwrap();
    assert_eq!(back, m);
    // The spec's example response says "uuid"; the schemas and every client
    // say "databaseId", so "uuid" is an unknown field.
    let spec_example =
        r#"{"version":2,"uuid":"a1b2c3d4-e5f6-7g8h-9i1j-2k3l4m5n6o7p","endpoints":[],"token":"t","expiresAt":"2023-10-01T00:00:00Z"}"#;
    assert!(serde_json::from_str::<DatabaseMetadata>(spec_example).is_err());
}

type Mutator = Box<dyn Fn(&mut DatabaseMetadata)>;

#[test]
fn validate_catches_what_clients_reject() {
    let ok = DatabaseMetadata::new(ProtocolVersion::V2, DB_ID, "https://h.example/kv", "t", 0);
    ok.validate().unwrap();
    let cases: Vec<(Mutator, &str)> = vec![
        (Box::new(|m| m.version = 4), "version 4"),
        (Box::new(|m| m.database_id = DB_ID.to_uppercase()), "lowercase hyphenated UUID"),
        (Box::new(|m| m.database_id = "nil".into()), "lowercase hyphenated UUID"),
        (Box::new(|m| m.token.clear()), "token is empty"),
        (Box::new(|m| m.expires_at = "2023-10-01 00:00:00".into()), "expiresAt"),
        (Box::new(|m| m.expires_at = "2023-10-01T00:00:00+00:00".into()), "expiresAt"),
        (Box::new(|m| m.endpoints.clear()), "no endpoints"),
        (Box::new(|m| m.endpoints[0].url = "/".into()), "ends with '/'"),
        (Box::new(|m| m.endpoints[0].url = "/kv/".into()), "ends with '/'"),
        (Box::new(|m| m.endpoints[0].url = "/kv?x=1".into()), "query or fragment"),
        (Box::new(|m| m.endpoints[0].url = "ftp://h/kv".into()), "not http or https"),
        (Box::new(|m| m.endpoints[0].url = String::new()), "is empty"),
        (Box::new(|m| m.endpoints[0].consistency = "weak".into()), "endpoints[0].consistency"),
        (Box::new(|m| m.endpoints[0].consistency = "eventual".into()), "no endpoint has consistency \"strong\""),
        (
            Box::new(|m| {
                m.version = 1;
                m.endpoints[0].url = "/kv".into()
            }),
            "absolute http(s) URL in protocol version 1",
        ),
    ];
    for (mutate, expected) in cases {
        let mut m = ok.clone();
        mutate(&mut m);
        let err = m.validate().unwrap_err();
        assert!(err.to_string().contains(expected), "{err} should mention {expected}");
        assert_eq!(err.http_status(), 500);
    }
    let mut v1 = ok.clone();
    v1.version = 1;
    v1.validate().unwrap(); // absolute URL: fine for v1
    let mut frac = ok;
    frac.expires_at = "2023-10-01T00:00:00.123456789Z".into();
    frac.validate().unwrap();
}

#[test]
fn formats_expires_at() {
    assert_eq!(format_expires_at(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_expires_at(999), "1970-01-01T00:00:00Z");
    assert_eq!(format_expires_at(-1), "1969-12-31T23:59:59Z");
    assert_eq!(format_expires_at(951_782_400_000), "2000-02-29T00:00:00Z"); // leap day of a /400 year
    assert_eq!(format_expires_at(4_107_542_399_000), "2100-02-28T23:59:59Z"); // 2100 is not a leap year
    assert_eq!(format_expires_at(4_107_542_400_000), "2100-03-01T00:00:00Z");
    assert_eq!(format_expires_at(1_696_118_400_000 + 86_400_000 + 3_723_000), "2023-10-02T01:02:03Z");
    assert_eq!(format_expires_at(253_402_300_799_000), "9999-12-31T23:59:59Z");
}

#[test]
fn parses_bearer_tokens() {
    assert_eq!(parse_bearer("Bearer abc"), Some("abc"));
    assert_eq!(parse_bearer("bearer abc"), Some("abc"));
    assert_eq!(parse_bearer("BEARER  abc "), Some("abc"));
    assert_eq!(parse_bearer("Basic abc"), None);
    assert_eq!(parse_bearer("Bearer"), None);
    assert_eq!(parse_bearer("Bearer "), None);
    assert_eq!(parse_bearer("abc"), None);
}

#[test]
fn datapath_headers() {
    let v3 = DatapathHeaders { denokv_version: Some("3"), denokv_database_id: Some(DB_ID), transaction_domain_id: None };
    assert_eq!(datapath_version(&v3, DB_ID).unwrap(), ProtocolVersion::V3);
    let v2 = DatapathHeaders { denokv_version: Some("2"), denokv_database_id: Some(&DB_ID.to_uppercase()), ..Default::default() };
    assert_eq!(datapath_version(&v2, DB_ID).unwrap(), ProtocolVersion::V2);
    let v1 = DatapathHeaders { transaction_domain_id: Some(DB_ID), ..Default::default() };
    assert_eq!(datapath_version(&v1, DB_ID).unwrap(), ProtocolVersion::V1);

    let missing = DatapathHeaders { denokv_version: Some("3"), transaction_domain_id: Some(DB_ID), ..Default::default() };
    assert_eq!(datapath_version(&missing, DB_ID).unwrap_err(), MetadataError::MissingHeader("x-denokv-database-id"));
    assert_eq!(datapath_version(&DatapathHeaders::default(), DB_ID).unwrap_err(), MetadataError::MissingHeader("x-transaction-domain-id"));
    let other_db = DatapathHeaders {
        denokv_version: Some("3"),
        denokv_database_id: Some("00000000-0000-0000-0000-000000000000"),
        ..Default::default()
    };
    let err = datapath_version(&other_db, DB_ID).unwrap_err();
    assert!(err.to_string().starts_with("invalid x-denokv-database-id header"), "{err}");
    let bad_version = DatapathHeaders { denokv_version: Some("4"), denokv_database_id: Some(DB_ID), ..Default::default() };
    assert_eq!(datapath_version(&bad_version, DB_ID).unwrap_err().to_string(), "invalid x-denokv-version header \"4\": expected 2 or 3");
}
