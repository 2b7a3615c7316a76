//! Typed payloads as OTLP `AnyValue`s, built straight from the payload's
//! `Serialize` impl: no JSON in between, structure and types kept (integers
//! stay integers, nested structs become key/value lists, sequences arrays).
//!
//! ```
//! use opentelemetry_proto::tonic::common::v1::any_value::Value;
//! use tapio::export::any_value::to_any_value;
//!
//! #[derive(serde::Serialize)]
//! struct Exec { pid: u32, args: Vec<&'static str> }
//!
//! let any = to_any_value(&Exec { pid: 42, args: vec!["sh", "-c"] })?;
//! let Some(Value::KvlistValue(kv)) = any.value else { panic!("a struct is a key/value list") };
//! assert_eq!(kv.values[0].key, "pid");
//! assert_eq!(kv.values[0].value.as_ref().unwrap().value, Some(Value::IntValue(42)));
//! # Ok::<(), tapio::export::any_value::Error>(())
//! ```

use std::fmt;

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value,
};
use serde::ser::{self, Serialize};

/// Why a payload could not be represented as an `AnyValue` (a map whose
/// keys are not strings or integers, or an error raised by the payload's
/// own `Serialize` impl).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "payload cannot be an OTLP AnyValue: {}", self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// `value` as an OTLP `AnyValue`.
pub fn to_any_value<T: Serialize + ?Sized>(value: &T) -> Result<AnyValue, Error> {
    value.serialize(AnyValueSerializer)
}

fn any(value: any_value::Value) -> AnyValue {
    AnyValue { value: Some(value) }
}

fn kv(key: impl Into<String>, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
        ..Default::default()
    }
}

fn kvlist(values: Vec<KeyValue>) -> AnyValue {
    any(any_value::Value::KvlistValue(KeyValueList { values }))
}

fn array(values: Vec<AnyValue>) -> AnyValue {
    any(any_value::Value::ArrayValue(ArrayValue { values }))
}

/// A serde `Serializer` whose output is an `AnyValue`.
#[derive(Debug, Clone, Copy)]
pub struct AnyValueSerializer;

impl ser::Serializer for AnyValueSerializer {
    type Ok = AnyValue;
    type Error = Error;
    type SerializeSeq = Seq;
    type SerializeTuple = Seq;
    type SerializeTupleStruct = Seq;
    type SerializeTupleVariant = Seq;
    type SerializeMap = Map;
    type SerializeStruct = Map;
    type SerializeStructVariant = Map;

    fn serialize_bool(self, v: bool) -> Result<AnyValue, Error> {
        Ok(any(any_value::Value::BoolValue(v)))
    }
    fn serialize_i8(self, v: i8) -> Result<AnyValue, Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<AnyValue, Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<AnyValue, Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<AnyValue, Error> {
        Ok(any(any_value::Value::IntValue(v)))
    }
    fn serialize_u8(self, v: u8) -> Result<AnyValue, Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<AnyValue, Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<AnyValue, Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<AnyValue, Error> {
        // Beyond i64 (capability masks, cookies): keep the exact digits
        // rather than wrap or lose precision.
        Ok(match i64::try_from(v) {
            Ok(v) => any(any_value::Value::IntValue(v)),
            Err(_) => any(any_value::Value::StringValue(v.to_string())),
        })
    }
    fn serialize_f32(self, v: f32) -> Result<AnyValue, Error> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<AnyValue, Error> {
        Ok(any(any_value::Value::DoubleValue(v)))
    }
    fn serialize_char(self, v: char) -> Result<AnyValue, Error> {
        Ok(any(any_value::Value::StringValue(v.to_string())))
    }
    fn serialize_str(self, v: &str) -> Result<AnyValue, Error> {
        Ok(any(any_value::Value::StringValue(v.to_owned())))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<AnyValue, Error> {
        Ok(any(any_value::Value::BytesValue(v.to_vec())))
    }
    fn serialize_none(self) -> Result<AnyValue, Error> {
        Ok(AnyValue { value: None })
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<AnyValue, Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<AnyValue, Error> {
        Ok(AnyValue { value: None })
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<AnyValue, Error> {
        Ok(AnyValue { value: None })
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<AnyValue, Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<AnyValue, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<AnyValue, Error> {
        Ok(kvlist(vec![kv(variant, value.serialize(self)?)]))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq, Error> {
        Ok(Seq::new(None, len))
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq, Error> {
        Ok(Seq::new(None, Some(len)))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq, Error> {
        Ok(Seq::new(None, Some(len)))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Seq, Error> {
        Ok(Seq::new(Some(variant), Some(len)))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Map, Error> {
        Ok(Map::new(None, len))
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Map, Error> {
        Ok(Map::new(None, Some(len)))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Map, Error> {
        Ok(Map::new(Some(variant), Some(len)))
    }
}

/// A sequence being built; `variant` wraps it as `{variant: [...]}`.
#[derive(Debug)]
pub struct Seq {
    variant: Option<&'static str>,
    values: Vec<AnyValue>,
}

impl Seq {
    fn new(variant: Option<&'static str>, len: Option<usize>) -> Self {
        Self {
            variant,
            // The hint comes from the payload; bound what it may reserve.
            values: Vec::with_capacity(len.unwrap_or(0).min(1024)),
        }
    }

    fn finish(self) -> AnyValue {
        let arr = array(self.values);
        match self.variant {
            Some(variant) => kvlist(vec![kv(variant, arr)]),
            None => arr,
        }
    }

    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.values.push(value.serialize(AnyValueSerializer)?);
        Ok(())
    }
}

/// The four sequence-like `Serialize*` traits do the same: push each
/// element, wrap at the end.
macro_rules! sequence_impl {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Seq {
            type Ok = AnyValue;
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.push(value)
            }
            fn end(self) -> Result<AnyValue, Error> {
                Ok(self.finish())
            }
        }
    )*};
}

sequence_impl!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// A map or struct being built; `variant` wraps it as `{variant: {...}}`.
#[derive(Debug)]
pub struct Map {
    variant: Option<&'static str>,
    values: Vec<KeyValue>,
    key: Option<String>,
}

impl Map {
    fn new(variant: Option<&'static str>, len: Option<usize>) -> Self {
        Self {
            variant,
            values: Vec::with_capacity(len.unwrap_or(0).min(1024)),
            key: None,
        }
    }

    fn finish(self) -> AnyValue {
        let map = kvlist(self.values);
        match self.variant {
            Some(variant) => kvlist(vec![kv(variant, map)]),
            None => map,
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        self.values
            .push(kv(key, value.serialize(AnyValueSerializer)?));
        Ok(())
    }
}

impl ser::SerializeMap for Map {
    type Ok = AnyValue;
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        let key = key.serialize(AnyValueSerializer)?;
        self.key = Some(match key.value {
            Some(any_value::Value::StringValue(s)) => s,
            Some(any_value::Value::IntValue(i)) => i.to_string(),
            Some(any_value::Value::BoolValue(b)) => b.to_string(),
            other => {
                return Err(Error(format!(
                    "map key {other:?} is not a string or integer"
                )));
            }
        });
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error("map value without a key".into()))?;
        self.field(&key, value)
    }
    fn end(self) -> Result<AnyValue, Error> {
        Ok(self.finish())
    }
}

/// Structs and struct variants: a field is a key/value pair.
macro_rules! struct_impl {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Map {
            type Ok = AnyValue;
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.field(key, value)
            }
            fn end(self) -> Result<AnyValue, Error> {
                Ok(self.finish())
            }
        }
    )*};
}

struct_impl!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn v(value: any_value::Value) -> AnyValue {
        any(value)
    }

    fn s(text: &str) -> AnyValue {
        v(any_value::Value::StringValue(text.into()))
    }

    fn i(n: i64) -> AnyValue {
        v(any_value::Value::IntValue(n))
    }

    #[derive(serde::Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Op {
        Mount,
        Renamed { from: String },
        Pair(u8, u8),
        Wrapped(u16),
    }

    #[derive(serde::Serialize)]
    struct Payload {
        pid: u32,
        big: u64,
        ratio: f64,
        comm: String,
        args: Vec<&'static str>,
        missing: Option<u32>,
        present: Option<i32>,
        ok: bool,
        ops: Vec<Op>,
        by_port: BTreeMap<u16, &'static str>,
        raw: serde_bytes_like::Bytes,
    }

    mod serde_bytes_like {
        pub struct Bytes(pub Vec<u8>);
        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }

    #[test]
    fn payload_types_and_structure_are_kept() {
        let payload = Payload {
            pid: 42,
            big: u64::MAX,
            ratio: 1.5,
            comm: "sh".into(),
            args: vec!["sh", "-c"],
            missing: None,
            present: Some(-1),
            ok: true,
            ops: vec![
                Op::Mount,
                Op::Renamed { from: "/a".into() },
                Op::Pair(1, 2),
                Op::Wrapped(7),
            ],
            by_port: [(53, "dns"), (443, "https")].into_iter().collect(),
            raw: serde_bytes_like::Bytes(vec![0, 255]),
        };
        let got = to_any_value(&payload).unwrap();
        let kl = |pairs: Vec<(&str, AnyValue)>| {
            kvlist(pairs.into_iter().map(|(k, v)| kv(k, v)).collect())
        };
        let want = kl(vec![
            ("pid", i(42)),
            ("big", s("18446744073709551615")),
            ("ratio", v(any_value::Value::DoubleValue(1.5))),
            ("comm", s("sh")),
            ("args", array(vec![s("sh"), s("-c")])),
            ("missing", AnyValue { value: None }),
            ("present", i(-1)),
            ("ok", v(any_value::Value::BoolValue(true))),
            (
                "ops",
                array(vec![
                    s("mount"),
                    kl(vec![("renamed", kl(vec![("from", s("/a"))]))]),
                    kl(vec![("pair", array(vec![i(1), i(2)]))]),
                    kl(vec![("wrapped", i(7))]),
                ]),
            ),
            ("by_port", kl(vec![("53", s("dns")), ("443", s("https"))])),
            ("raw", v(any_value::Value::BytesValue(vec![0, 255]))),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn a_map_with_unrepresentable_keys_is_a_clear_error() {
        let mut m = BTreeMap::new();
        m.insert(vec![1u8], 1);
        let err = to_any_value(&m).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("payload cannot be an OTLP AnyValue: map key"),
            "{err}"
        );
    }

    #[test]
    fn agrees_with_the_json_path_for_json_values() {
        let json = serde_json::json!({"pid": 42, "args": ["sh"], "n": null, "x": 1.5, "ok": false});
        assert_eq!(
            to_any_value(&json).unwrap(),
            super::super::otlp::json_to_any(&json)
        );
    }
}
