//! A checker of JSON bodies against the Cloud Hypervisor OpenAPI document
//! (`cloud-hypervisor-api.json`, the YAML reference converted to JSON
//! without changes). Used by the fake CH on every request it receives, and
//! by the tests on the golden `vm.create` bodies.
//!
//! It covers what the document uses: `$ref`, objects (`properties`,
//! `required`, `additionalProperties`), arrays, strings, integers (with
//! `format` ranges and `minimum`/`maximum`), booleans and `enum`. It is
//! stricter than CH on one point: a property the schema does not name is a
//! violation, so a misspelt field cannot pass silently.
#![allow(dead_code)]

use serde_json::Value;

pub struct ApiSpec {
    doc: Value,
}

impl ApiSpec {
    pub fn load() -> Result<ApiSpec, String> {
        let doc = serde_json::from_str(include_str!("cloud-hypervisor-api.json")).map_err(|e| format!("API document: {e}"))?;
        Ok(ApiSpec { doc })
    }

    /// The request-body schema of `METHOD /endpoint`: Ok(None) for an
    /// operation without a body, Err for an unknown path or method.
    pub fn request_schema(&self, endpoint: &str, method: &str) -> Result<Option<&Value>, String> {
        let item = self.doc.pointer("/paths").and_then(|p| p.get(format!("/{endpoint}"))).ok_or_else(|| format!("no endpoint /{endpoint} in the API"))?;
        let op = item.get(method.to_ascii_lowercase()).ok_or_else(|| format!("/{endpoint} does not take {method}"))?;
        Ok(op.pointer("/requestBody/content/application~1json/schema"))
    }

    /// The schema of the JSON answer `METHOD /endpoint` gives with `status`.
    pub fn response_schema(&self, endpoint: &str, method: &str, status: u16) -> Option<&Value> {
        let op = self.doc.pointer("/paths")?.get(format!("/{endpoint}"))?.get(method.to_ascii_lowercase())?;
        op.get("responses")?.get(status.to_string())?.pointer("/content/application~1json/schema")
    }

    pub fn schema(&self, name: &str) -> Option<&Value> {
        self.doc.pointer(&format!("/components/schemas/{name}"))
    }

    /// Every way `v` breaks `schema`, each with its JSON path.
    pub fn check(&self, schema: &Value, v: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        self.walk(schema, v, "$", &mut errs);
        errs
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, String> {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let ptr = r.strip_prefix('#').ok_or_else(|| format!("external $ref {r}"))?;
                self.doc.pointer(ptr).ok_or_else(|| format!("dangling $ref {r}"))
            }
            None => Ok(schema),
        }
    }

    fn walk(&self, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let schema = match self.resolve(schema) {
            Ok(s) => s,
            Err(e) => return errs.push(format!("{at}: {e}")),
        };
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(v) {
                errs.push(format!("{at}: {v} is not one of {allowed:?}"));
            }
        }
        let ty = schema.get("type").and_then(Value::as_str).or_else(|| schema.get("properties").map(|_| "object"));
        match ty {
            Some("object") => self.object(schema, v, at, errs),
            Some("array") => match v.as_array() {
                Some(items) => {
                    if let Some(item) = schema.get("items") {
                        for (i, x) in items.iter().enumerate() {
                            self.walk(item, x, &format!("{at}[{i}]"), errs);
                        }
                    }
                }
                None => errs.push(format!("{at}: expected an array, got {v}")),
            },
            Some("string") if !v.is_string() => errs.push(format!("{at}: expected a string, got {v}")),
            Some("boolean") if !v.is_boolean() => errs.push(format!("{at}: expected a boolean, got {v}")),
            Some("number") if !v.is_number() => errs.push(format!("{at}: expected a number, got {v}")),
            Some("integer") => self.integer(schema, v, at, errs),
            _ => {}
        }
    }

    fn object(&self, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let Some(obj) = v.as_object() else { return errs.push(format!("{at}: expected an object, got {v}")) };
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = req.as_str() {
                if !obj.contains_key(name) {
                    errs.push(format!("{at}: required field {name:?} is missing"));
                }
            }
        }
        for (k, x) in obj {
            let here = format!("{at}.{k}");
            match (props.and_then(|p| p.get(k)), schema.get("additionalProperties")) {
                (Some(s), _) => self.walk(s, x, &here, errs),
                (None, Some(extra)) if extra.is_object() => self.walk(extra, x, &here, errs),
                (None, Some(Value::Bool(true))) => {}
                _ => errs.push(format!("{here}: unknown field (not in the schema)")),
            }
        }
    }

    fn integer(&self, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let n = match (v.as_i64(), v.as_u64()) {
            (Some(n), _) => i128::from(n),
            (None, Some(n)) => i128::from(n),
            _ => return errs.push(format!("{at}: expected an integer, got {v}")),
        };
        let range: Option<(i128, i128)> = match schema.get("format").and_then(Value::as_str) {
            Some("int8") => Some((i8::MIN.into(), i8::MAX.into())),
            Some("uint8") => Some((0, u8::MAX.into())),
            Some("int16") => Some((i16::MIN.into(), i16::MAX.into())),
            Some("uint16") => Some((0, u16::MAX.into())),
            Some("int32") => Some((i32::MIN.into(), i32::MAX.into())),
            Some("uint32") => Some((0, u32::MAX.into())),
            Some("int64") => Some((i64::MIN.into(), i64::MAX.into())),
            _ => None,
        };
        if let Some((lo, hi)) = range {
            if n < lo || n > hi {
                errs.push(format!("{at}: {n} is out of range for {}", schema["format"]));
            }
        }
        if let Some(min) = schema.get("minimum").and_then(Value::as_i64) {
            if n < i128::from(min) {
                errs.push(format!("{at}: {n} is below the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_i64) {
            if n > i128::from(max) {
                errs.push(format!("{at}: {n} is above the maximum {max}"));
            }
        }
    }
}
