//! The canonical form (see [`super::canonical_json`]) written without a `serde_json::Value`:
//! [`write_canonical`] serializes any `Serialize` value straight into a buffer.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::ser::{self, Impossible, Serialize};
use serde_json::Error;

use super::chain_hash::{key_order, write_string};

/// Appends the canonical JSON of `value` to `out`: the same text as
/// `canonical_json(&serde_json::to_value(value)?)`, without building the value.
pub(crate) fn write_canonical<T: Serialize + ?Sized>(
    value: &T,
    out: &mut String,
) -> Result<(), Error> {
    value.serialize(Canon { out })
}

/// The canonical JSON of `value` as a new string.
#[cfg(test)]
pub(crate) fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    let mut out = String::with_capacity(64);
    write_canonical(value, &mut out)?;
    Ok(out)
}

/// The serializer: writes one value in canonical form.
struct Canon<'a> {
    out: &'a mut String,
}

fn int(out: &mut String, v: impl std::fmt::Display) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{v}");
}

impl<'a> ser::Serializer for Canon<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Items<'a>;
    type SerializeTuple = Items<'a>;
    type SerializeTupleStruct = Items<'a>;
    type SerializeTupleVariant = Items<'a>;
    type SerializeMap = Members<'a>;
    type SerializeStruct = Members<'a>;
    type SerializeStructVariant = Members<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        int(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        int(self.out, v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        // As `serde_json::to_value` does: a non-finite number becomes `null`.
        match serde_json::Number::from_f64(v) {
            Some(n) => self.out.push_str(&n.to_string()),
            None => self.out.push_str("null"),
        }
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        write_string(v.encode_utf8(&mut [0; 4]), self.out);
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_string(v, self.out);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        // As serde_json: an array of numbers.
        self.out.push('[');
        for (i, b) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            int(self.out, b);
        }
        self.out.push(']');
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.push_str("null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.out.push('{');
        write_string(variant, self.out);
        self.out.push(':');
        value.serialize(Canon { out: self.out })?;
        self.out.push('}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Items<'a>, Error> {
        self.out.push('[');
        Ok(Items {
            out: self.out,
            first: true,
            close: "]",
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Items<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Items<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Items<'a>, Error> {
        self.out.push('{');
        write_string(variant, self.out);
        self.out.push_str(":[");
        Ok(Items {
            out: self.out,
            first: true,
            close: "]}",
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Members<'a>, Error> {
        Ok(Members::open(self.out, len.unwrap_or(4), ""))
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Members<'a>, Error> {
        Ok(Members::open(self.out, len, ""))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Members<'a>, Error> {
        self.out.push('{');
        write_string(variant, self.out);
        self.out.push(':');
        Ok(Members::open(self.out, len, "}"))
    }
}

/// An array being written.
struct Items<'a> {
    out: &'a mut String,
    first: bool,
    close: &'static str,
}

impl Items<'_> {
    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        value.serialize(Canon { out: self.out })
    }
    fn close(self) {
        self.out.push_str(self.close);
    }
}

/// The four sequence-like serializers of serde all write an array item by item; only the name of
/// the item method differs (`serialize_element` or `serialize_field`).
macro_rules! items_serializer {
    ($($trait:ident :: $method:ident),+ $(,)?) => {$(
        impl ser::$trait for Items<'_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.item(value)
            }
            fn end(self) -> Result<(), Error> {
                self.close();
                Ok(())
            }
        }
    )+};
}

items_serializer!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

/// An object being written: each member (`"key":value`) is written where it comes; if the
/// members did not come in canonical order, they are then copied in order after the last one
/// and the unordered text is removed (no allocation but the member list).
struct Members<'a> {
    out: &'a mut String,
    /// Where the first member starts (just after `{`).
    start: usize,
    /// Each member's key and the byte range of its `"key":value` text in `out`.
    members: Vec<(Cow<'static, str>, usize, usize)>,
    /// A map key waiting for its value.
    key: Option<String>,
    close: &'static str,
}

impl<'a> Members<'a> {
    fn open(out: &'a mut String, len: usize, close: &'static str) -> Self {
        out.push('{');
        let start = out.len();
        Self {
            out,
            start,
            members: Vec::with_capacity(len),
            key: None,
            close,
        }
    }

    fn member<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Error> {
        if !self.members.is_empty() {
            self.out.push(',');
        }
        let begin = self.out.len();
        write_string(&key, self.out);
        self.out.push(':');
        value.serialize(Canon { out: self.out })?;
        self.members.push((key, begin, self.out.len()));
        Ok(())
    }

    fn end(mut self) -> Result<(), Error> {
        let ordered = self
            .members
            .windows(2)
            .all(|w| key_order(&w[0].0, &w[1].0).is_lt());
        if !ordered {
            self.members.sort_unstable_by(|a, b| key_order(&a.0, &b.0));
            if let Some(w) = self.members.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(ser::Error::custom(format!("duplicate key {}", w[0].0)));
            }
            let unordered_end = self.out.len();
            for (i, (_, begin, end)) in self.members.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.extend_from_within(*begin..*end);
            }
            self.out.replace_range(self.start..unordered_end, "");
        }
        self.out.push('}');
        self.out.push_str(self.close);
        Ok(())
    }
}

impl ser::SerializeStruct for Members<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.member(Cow::Borrowed(key), value)
    }
    fn end(self) -> Result<(), Error> {
        Members::end(self)
    }
}

impl ser::SerializeStructVariant for Members<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.member(Cow::Borrowed(key), value)
    }
    fn end(self) -> Result<(), Error> {
        Members::end(self)
    }
}

impl ser::SerializeMap for Members<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(KeyName)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| <Error as ser::Error>::custom("a map value without a key"))?;
        self.member(Cow::Owned(key), value)
    }
    fn end(self) -> Result<(), Error> {
        Members::end(self)
    }
}

/// Map keys: strings, and integers and booleans as their decimal text (as serde_json).
struct KeyName;

fn key_must_be_a_string() -> Error {
    ser::Error::custom("key must be a string")
}

impl ser::Serializer for KeyName {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = Impossible<String, Error>;
    type SerializeTuple = Impossible<String, Error>;
    type SerializeTupleStruct = Impossible<String, Error>;
    type SerializeTupleVariant = Impossible<String, Error>;
    type SerializeMap = Impossible<String, Error>;
    type SerializeStruct = Impossible<String, Error>;
    type SerializeStructVariant = Impossible<String, Error>;

    fn serialize_bool(self, v: bool) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i8(self, v: i8) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_f32(self, _v: f32) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_f64(self, _v: f64) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_char(self, v: char) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_str(self, v: &str) -> Result<String, Error> {
        Ok(v.to_owned())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_none(self) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit(self) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, Error> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_must_be_a_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::canonical_json;
    use crate::audit::record::{AuditEvent, ConnectorScopes, Effect, PreflightSummary, RecordRef};
    use serde_json::{Value, json};

    fn events() -> Vec<AuditEvent> {
        vec![
            AuditEvent::StepOutcome {
                step: "s\"\n\u{1}é\u{7f}\u{2028}".into(),
                attempt: 3,
                effect: Effect::Write,
                failure_class: None,
                detail: Some("x\\y\u{1f}\u{8}".into()),
            },
            AuditEvent::RunStarted {
                chain: "c".into(),
                chain_version: "v".into(),
                preflight: PreflightSummary {
                    passed: true,
                    missing: vec![ConnectorScopes {
                        connector: "crm".into(),
                        scopes: vec!["a".into(), "b".into()],
                    }],
                    unused: vec![],
                },
            },
            AuditEvent::TokenRefresh {
                failure_class: None,
                expires_at_unix_ms: Some(-5),
                http_status: None,
                error_code: Some("bad".into()),
            },
            AuditEvent::HttpAttempt {
                step: "s".into(),
                http_attempt: 1,
                method: "GET".into(),
                status: 0,
                failure_class: None,
                wait_ms: Some(1500),
            },
        ]
    }

    #[test]
    fn the_serializer_writes_what_canonical_json_writes() {
        for event in events() {
            let expected = canonical_json(&serde_json::to_value(&event).unwrap());
            assert_eq!(to_canonical(&event).unwrap(), expected);
            assert!(
                super::super::canonical_text::is_canonical(&expected),
                "{expected}"
            );
        }
        let refs = vec![RecordRef::new("crm", "issue", "T-1")];
        assert_eq!(
            to_canonical(&refs).unwrap(),
            r#"[{"connector":"crm","id":"T-1","kind":"issue"}]"#
        );
        let map: std::collections::HashMap<String, Value> = [
            ("b".into(), json!(1)),
            ("a".into(), json!({"z": null, "y": [true, false]})),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            to_canonical(&map).unwrap(),
            r#"{"a":{"y":[true,false],"z":null},"b":1}"#
        );
        assert_eq!(to_canonical(&u64::MAX).unwrap(), u64::MAX.to_string());
        assert_eq!(to_canonical(&1.5f64).unwrap(), "1.5");
        assert_eq!(to_canonical(&f64::NAN).unwrap(), "null");
    }
}
