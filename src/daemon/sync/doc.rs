//! Between Automerge and JSON: a document (or a value in it) as JSON, path
//! operations applied as Automerge operations, and Automerge's patches as
//! path operations.
//!
//! Maps become objects, lists arrays, texts strings, counters and
//! timestamps numbers, bytes arrays of numbers. Text indices count Unicode
//! code points (the documents use that text encoding).

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ObjId, ObjType, Patch, PatchAction, Prop, ROOT, ReadDoc, ScalarValue};
use serde_json::{Map, Number, Value};

use crate::protocol::sync::{MAX_PATH_DEPTH, PatchOp, PathElem, Revision, ValueKind, show_path};
use crate::protocol::{ErrorCode, WireError};

/// Nesting deeper than this is shown as `null` (a replica may build deeper
/// documents than a view write may; the export must not overflow the stack).
const MAX_EXPORT_DEPTH: usize = 128;

/// Heads as a revision: sorted lowercase hex.
pub(crate) fn revision(heads: &[ChangeHash]) -> Revision {
    let mut out: Vec<String> = heads.iter().map(ToString::to_string).collect();
    out.sort();
    Revision(out)
}

/// A revision as heads the document has: `invalid_request` for text that is
/// not a hash, `unknown_revision` for a hash the document lacks.
pub(crate) fn heads_of(doc: &mut AutoCommit, rev: &Revision) -> Result<Vec<ChangeHash>, WireError> {
    let mut heads = Vec::with_capacity(rev.0.len());
    for h in &rev.0 {
        let hash: ChangeHash = h.parse().map_err(|_| {
            WireError::new(ErrorCode::InvalidRequest, format!("{h:?} is not a change hash (64 hex digits)"))
        })?;
        if doc.get_change_meta_by_hash(&hash).is_none() {
            return Err(WireError::new(
                ErrorCode::UnknownRevision,
                format!("this document has no change {h}; get the document again"),
            ));
        }
        heads.push(hash);
    }
    Ok(heads)
}

fn err(code: ErrorCode, path: &[PathElem], why: impl std::fmt::Display) -> WireError {
    WireError::new(code, format!("{}: {why}", show_path(path)))
}

/// The object at `path` and its type, for reads (`heads`: as of then).
fn resolve(doc: &AutoCommit, path: &[PathElem], heads: Option<&[ChangeHash]>) -> Result<Resolved, WireError> {
    let mut obj = ROOT;
    let mut ty = ObjType::Map;
    for (n, step) in path.iter().enumerate() {
        let here = &path[..=n];
        let prop = prop_for(ty, step, here)?;
        let got = match heads {
            Some(h) => doc.get_at(&obj, prop, h),
            None => doc.get(&obj, prop),
        }
        .map_err(|e| err(ErrorCode::PathNotFound, here, e))?;
        match got {
            None => return Err(err(ErrorCode::PathNotFound, here, "does not exist")),
            Some((automerge::Value::Object(t), id)) => {
                obj = id;
                ty = t;
            }
            Some((automerge::Value::Scalar(s), _)) => {
                if n + 1 == path.len() {
                    return Ok(Resolved::Scalar(s.into_owned()));
                }
                return Err(err(ErrorCode::NotAContainer, here, "is a scalar, not a map or list"));
            }
        }
    }
    Ok(Resolved::Object(obj, ty))
}

enum Resolved {
    Object(ObjId, ObjType),
    Scalar(ScalarValue),
}

/// The object a write's path leads into: every step but the last must be a map or list.
fn container(doc: &AutoCommit, path: &[PathElem]) -> Result<(ObjId, ObjType), WireError> {
    match resolve(doc, path, None)? {
        Resolved::Object(obj, ty) => Ok((obj, ty)),
        Resolved::Scalar(_) => Err(err(ErrorCode::NotAContainer, path, "is a scalar, not a map or list")),
    }
}

fn prop_for(ty: ObjType, step: &PathElem, here: &[PathElem]) -> Result<Prop, WireError> {
    match (ty, step) {
        (ObjType::Map | ObjType::Table, PathElem::Key(k)) => Ok(Prop::Map(k.clone())),
        (ObjType::List | ObjType::Text, PathElem::Index(i)) => {
            Ok(Prop::Seq(usize::try_from(*i).map_err(|_| err(ErrorCode::PathNotFound, here, "index out of range"))?))
        }
        (ObjType::Map | ObjType::Table, PathElem::Index(_)) => {
            Err(err(ErrorCode::WrongType, here, "is an index, but its parent is a map"))
        }
        (ObjType::List, PathElem::Key(_)) => Err(err(ErrorCode::WrongType, here, "is a key, but its parent is a list")),
        (ObjType::Text, PathElem::Key(_)) => Err(err(ErrorCode::WrongType, here, "is a key, but its parent is a text")),
    }
}

/// The value at `path` as JSON (`heads`: as of then).
pub(crate) fn to_json(doc: &AutoCommit, path: &[PathElem], heads: Option<&[ChangeHash]>) -> Result<Value, WireError> {
    Ok(match resolve(doc, path, heads)? {
        Resolved::Scalar(s) => scalar_json(&s),
        Resolved::Object(obj, ty) => object_json(doc, &obj, ty, heads, 0),
    })
}

fn object_json(doc: &AutoCommit, obj: &ObjId, ty: ObjType, heads: Option<&[ChangeHash]>, depth: usize) -> Value {
    if depth >= MAX_EXPORT_DEPTH {
        return Value::Null;
    }
    let child = |value: automerge::Value<'_>, id: ObjId| match value {
        automerge::Value::Object(t) => object_json(doc, &id, t, heads, depth + 1),
        automerge::Value::Scalar(s) => scalar_json(&s),
    };
    match ty {
        ObjType::Map | ObjType::Table => {
            let keys: Vec<String> = match heads {
                Some(h) => doc.keys_at(obj, h).collect(),
                None => doc.keys(obj).collect(),
            };
            let mut map = Map::with_capacity(keys.len());
            for key in keys {
                let got = match heads {
                    Some(h) => doc.get_at(obj, key.as_str(), h),
                    None => doc.get(obj, key.as_str()),
                };
                if let Ok(Some((value, id))) = got {
                    map.insert(key, child(value, id));
                }
            }
            Value::Object(map)
        }
        ObjType::List => {
            let len = match heads {
                Some(h) => doc.length_at(obj, h),
                None => doc.length(obj),
            };
            let mut list = Vec::with_capacity(len);
            for i in 0..len {
                let got = match heads {
                    Some(h) => doc.get_at(obj, i, h),
                    None => doc.get(obj, i),
                };
                list.push(match got {
                    Ok(Some((value, id))) => child(value, id),
                    _ => Value::Null,
                });
            }
            Value::Array(list)
        }
        ObjType::Text => Value::String(
            match heads {
                Some(h) => doc.text_at(obj, h),
                None => doc.text(obj),
            }
            .unwrap_or_default(),
        ),
    }
}

fn scalar_json(s: &ScalarValue) -> Value {
    match s {
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Int(n) | ScalarValue::Timestamp(n) => Value::from(*n),
        ScalarValue::Uint(n) => Value::from(*n),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        ScalarValue::Counter(c) => Value::from(i64::from(c)),
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Bytes(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Value::Null,
    }
}

/// Checks a write's size and depth before anything is applied.
pub(crate) fn check_op(op: &PatchOp, max_value_size: u64) -> Result<(), WireError> {
    let path = op.path();
    if path.len() > MAX_PATH_DEPTH {
        return Err(err(
            ErrorCode::ValueTooLarge,
            &path[..4],
            format!("paths may be at most {MAX_PATH_DEPTH} steps deep"),
        ));
    }
    let values: Vec<&Value> = match op {
        PatchOp::Put { value, .. } => vec![value],
        PatchOp::Insert { values, .. } => values.iter().collect(),
        _ => Vec::new(),
    };
    let mut size = 0u64;
    for value in values {
        if depth(value) + path.len() > MAX_PATH_DEPTH {
            return Err(err(
                ErrorCode::ValueTooLarge,
                path,
                format!("values may nest at most {MAX_PATH_DEPTH} levels"),
            ));
        }
        size += serde_json::to_vec(value).map_or(u64::MAX, |v| v.len() as u64);
    }
    if let PatchOp::Splice { insert, .. } = op {
        size += insert.len() as u64;
    }
    if size > max_value_size {
        return Err(err(
            ErrorCode::ValueTooLarge,
            path,
            format!("the value is {size} bytes; sync.max_value_size is {max_value_size}"),
        ));
    }
    Ok(())
}

/// Nesting depth of a JSON value, without recursion.
fn depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(list) => stack.extend(list.iter().map(|x| (x, d + 1))),
            Value::Object(map) => stack.extend(map.values().map(|x| (x, d + 1))),
            _ => {}
        }
        if max > MAX_PATH_DEPTH + 1 {
            break;
        }
    }
    max
}

/// Applies one operation inside the document's open transaction. On an
/// error the caller rolls the whole transaction back.
pub(crate) fn apply_op(doc: &mut AutoCommit, op: &PatchOp) -> Result<(), WireError> {
    let path = op.path();
    if let PatchOp::Splice { index, delete, insert, .. } = op {
        let (obj, ty) = container(doc, path)?;
        if ty != ObjType::Text {
            return Err(err(ErrorCode::WrongType, path, "splice edits a text; this is a map or list"));
        }
        let len = doc.length(&obj) as u64;
        if index.saturating_add(*delete) > len {
            return Err(err(
                ErrorCode::PathNotFound,
                path,
                format!("range {index}+{delete} beyond the text's {len} characters"),
            ));
        }
        let del =
            isize::try_from(*delete).map_err(|_| err(ErrorCode::PathNotFound, path, "delete count out of range"))?;
        return doc.splice_text(&obj, *index as usize, del, insert).map_err(|e| err(ErrorCode::Internal, path, e));
    }
    let Some((last, parent_path)) = path.split_last() else {
        return Err(WireError::new(ErrorCode::InvalidRequest, format!("{} needs a non-empty path", op.name())));
    };
    let (obj, ty) = container(doc, parent_path)?;
    let prop = prop_for(ty, last, path)?;
    let am = |e: automerge::AutomergeError| err(ErrorCode::Internal, path, e);
    match (op, ty, prop) {
        (PatchOp::Put { value, kind, .. }, ObjType::Map | ObjType::Table, Prop::Map(key)) => {
            put_value(doc, &obj, Prop::Map(key), value, *kind, path)
        }
        (PatchOp::Put { value, kind, .. }, ObjType::List, Prop::Seq(i)) => {
            if i >= doc.length(&obj) {
                return Err(err(ErrorCode::PathNotFound, path, "no such element; use insert to add one"));
            }
            put_value(doc, &obj, Prop::Seq(i), value, *kind, path)
        }
        (PatchOp::Put { .. }, ObjType::Text, _) => {
            Err(err(ErrorCode::WrongType, path, "is a character of a text; edit texts with splice"))
        }
        (PatchOp::Delete { .. }, ObjType::Map | ObjType::Table, Prop::Map(key)) => {
            if doc.get(&obj, key.as_str()).map_err(am)?.is_none() {
                return Err(err(ErrorCode::PathNotFound, path, "does not exist"));
            }
            doc.delete(&obj, key.as_str()).map_err(am)
        }
        (PatchOp::Delete { count, .. }, ObjType::List | ObjType::Text, Prop::Seq(i)) => {
            let count = count.unwrap_or(1);
            let len = doc.length(&obj) as u64;
            if (i as u64).saturating_add(count) > len {
                return Err(err(
                    ErrorCode::PathNotFound,
                    path,
                    format!("deleting {count} from {i} passes the end ({len})"),
                ));
            }
            let count = isize::try_from(count).map_err(|_| err(ErrorCode::PathNotFound, path, "count out of range"))?;
            if ty == ObjType::Text {
                doc.splice_text(&obj, i, count, "").map_err(am)
            } else {
                doc.splice(&obj, i, count, std::iter::empty::<ScalarValue>()).map_err(am)
            }
        }
        (PatchOp::Insert { values, .. }, ObjType::List, Prop::Seq(i)) => {
            if i > doc.length(&obj) {
                return Err(err(
                    ErrorCode::PathNotFound,
                    path,
                    format!("index {i} is past the list's end ({})", doc.length(&obj)),
                ));
            }
            for (k, value) in values.iter().enumerate() {
                insert_value(doc, &obj, i + k, value, path)?;
            }
            Ok(())
        }
        (PatchOp::Insert { .. }, _, _) => {
            Err(err(ErrorCode::WrongType, path, "insert needs a list index; texts use splice"))
        }
        (PatchOp::Increment { by, .. }, _, prop) => {
            match doc.get(&obj, prop.clone()).map_err(am)? {
                Some((automerge::Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Counter(_)) => {}
                Some(_) => {
                    return Err(err(ErrorCode::WrongType, path, "is not a counter (put one with \"as\":\"counter\")"));
                }
                None => return Err(err(ErrorCode::PathNotFound, path, "does not exist")),
            }
            doc.increment(&obj, prop, *by).map_err(am)
        }
        _ => Err(err(ErrorCode::WrongType, path, format!("{} does not apply here", op.name()))),
    }
}

fn put_value(
    doc: &mut AutoCommit,
    obj: &ObjId,
    prop: Prop,
    value: &Value,
    kind: Option<ValueKind>,
    path: &[PathElem],
) -> Result<(), WireError> {
    let am = |e: automerge::AutomergeError| err(ErrorCode::Internal, path, e);
    if let Some(kind) = kind {
        return match (kind, value) {
            (ValueKind::Text, Value::String(s)) => {
                let text = doc.put_object(obj, prop, ObjType::Text).map_err(am)?;
                doc.splice_text(&text, 0, 0, s).map_err(am)
            }
            (ValueKind::Counter, Value::Number(n)) if n.is_i64() => {
                doc.put(obj, prop, ScalarValue::counter(n.as_i64().unwrap_or(0))).map_err(am)
            }
            (ValueKind::Timestamp, Value::Number(n)) if n.is_i64() => {
                doc.put(obj, prop, ScalarValue::Timestamp(n.as_i64().unwrap_or(0))).map_err(am)
            }
            (kind, _) => Err(err(
                ErrorCode::WrongType,
                path,
                format!("\"as\":{:?} needs {}", kind, if kind == ValueKind::Text { "a string" } else { "an integer" }),
            )),
        };
    }
    match value {
        Value::Object(map) => {
            let child = doc.put_object(obj, prop, ObjType::Map).map_err(am)?;
            fill_map(doc, &child, map, path)
        }
        Value::Array(list) => {
            let child = doc.put_object(obj, prop, ObjType::List).map_err(am)?;
            fill_list(doc, &child, list, path)
        }
        scalar => doc.put(obj, prop, json_scalar(scalar)).map_err(am),
    }
}

fn insert_value(
    doc: &mut AutoCommit,
    obj: &ObjId,
    at: usize,
    value: &Value,
    path: &[PathElem],
) -> Result<(), WireError> {
    let am = |e: automerge::AutomergeError| err(ErrorCode::Internal, path, e);
    match value {
        Value::Object(map) => {
            let child = doc.insert_object(obj, at, ObjType::Map).map_err(am)?;
            fill_map(doc, &child, map, path)
        }
        Value::Array(list) => {
            let child = doc.insert_object(obj, at, ObjType::List).map_err(am)?;
            fill_list(doc, &child, list, path)
        }
        scalar => doc.insert(obj, at, json_scalar(scalar)).map_err(am),
    }
}

fn fill_map(doc: &mut AutoCommit, obj: &ObjId, map: &Map<String, Value>, path: &[PathElem]) -> Result<(), WireError> {
    for (k, v) in map {
        put_value(doc, obj, Prop::Map(k.clone()), v, None, path)?;
    }
    Ok(())
}

fn fill_list(doc: &mut AutoCommit, obj: &ObjId, list: &[Value], path: &[PathElem]) -> Result<(), WireError> {
    for (i, v) in list.iter().enumerate() {
        insert_value(doc, obj, i, v, path)?;
    }
    Ok(())
}

fn json_scalar(value: &Value) -> ScalarValue {
    match value {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else {
                ScalarValue::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Array(_) | Value::Object(_) => ScalarValue::Null,
    }
}

/// Automerge's patches as path operations. Conflicts and marks have no
/// JSON meaning and are left out.
pub(crate) fn patch_ops(patches: Vec<Patch>) -> Vec<PatchOp> {
    let mut out = Vec::with_capacity(patches.len());
    for patch in patches {
        let mut base: Vec<PathElem> = patch.path.iter().map(|(_, prop)| elem(prop)).collect();
        let at = |base: &Vec<PathElem>, last: PathElem| {
            let mut p = base.clone();
            p.push(last);
            p
        };
        match patch.action {
            PatchAction::PutMap { key, value, .. } => {
                let (value, kind) = patch_value(&value.0);
                out.push(PatchOp::Put { path: at(&base, PathElem::Key(key)), value, kind });
            }
            PatchAction::PutSeq { index, value, .. } => {
                let (value, kind) = patch_value(&value.0);
                out.push(PatchOp::Put { path: at(&base, PathElem::Index(index as u64)), value, kind });
            }
            PatchAction::Insert { index, values } => {
                // Insert carries plain values; a text or counter inside a list
                // shows as its JSON form (later patches fill a text in).
                let values: Vec<Value> = values.iter().map(|(v, _, _)| patch_value(v).0).collect();
                out.push(PatchOp::Insert { path: at(&base, PathElem::Index(index as u64)), values });
            }
            PatchAction::SpliceText { index, value, .. } => {
                out.push(PatchOp::Splice {
                    path: std::mem::take(&mut base),
                    index: index as u64,
                    delete: 0,
                    insert: value.make_string(),
                });
            }
            PatchAction::DeleteMap { key } => {
                out.push(PatchOp::Delete { path: at(&base, PathElem::Key(key)), count: None });
            }
            PatchAction::DeleteSeq { index, length } => out.push(PatchOp::Delete {
                path: at(&base, PathElem::Index(index as u64)),
                count: (length != 1).then_some(length as u64),
            }),
            PatchAction::Increment { prop, value } => {
                out.push(PatchOp::Increment { path: at(&base, elem(&prop)), by: value });
            }
            PatchAction::Conflict { .. } | PatchAction::Mark { .. } => {}
        }
    }
    out
}

fn elem(prop: &Prop) -> PathElem {
    match prop {
        Prop::Map(k) => PathElem::Key(k.clone()),
        Prop::Seq(i) => PathElem::Index(*i as u64),
    }
}

/// A patch's value: an empty container (its contents come in later patches), or a scalar.
fn patch_value(value: &automerge::Value<'_>) -> (Value, Option<ValueKind>) {
    match value {
        automerge::Value::Object(ObjType::Map | ObjType::Table) => (Value::Object(Map::new()), None),
        automerge::Value::Object(ObjType::List) => (Value::Array(Vec::new()), None),
        automerge::Value::Object(ObjType::Text) => (Value::String(String::new()), Some(ValueKind::Text)),
        automerge::Value::Scalar(s) => {
            let kind = match s.as_ref() {
                ScalarValue::Counter(_) => Some(ValueKind::Counter),
                ScalarValue::Timestamp(_) => Some(ValueKind::Timestamp),
                _ => None,
            };
            (scalar_json(s), kind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sync::apply_patch;
    use serde_json::json;

    fn ops(v: Value) -> Vec<PatchOp> {
        serde_json::from_value(v).unwrap()
    }

    fn write(doc: &mut AutoCommit, v: Value) -> Result<(), WireError> {
        for op in ops(v) {
            if let Err(e) = apply_op(doc, &op) {
                doc.rollback();
                return Err(e);
            }
        }
        doc.commit();
        Ok(())
    }

    fn code(doc: &mut AutoCommit, v: Value) -> ErrorCode {
        write(doc, v).unwrap_err().code
    }

    #[test]
    fn writes_build_the_json_they_describe_and_patches_replay_them() {
        let mut doc = AutoCommit::new();
        doc.update_diff_cursor();
        let mut mirror = json!({});
        write(&mut doc, json!([{"op": "put", "path": ["a"], "value": {"list": [1, {"x": true}], "s": "plain"}}]))
            .unwrap();
        write(
            &mut doc,
            json!([
                {"op": "put", "path": ["t"], "value": "hello", "as": "text"},
                {"op": "put", "path": ["n"], "value": 5, "as": "counter"},
                {"op": "put", "path": ["when"], "value": 1700000000000_i64, "as": "timestamp"},
            ]),
        )
        .unwrap();
        write(
            &mut doc,
            json!([
                {"op": "splice", "path": ["t"], "index": 5, "insert": " world"},
                {"op": "splice", "path": ["t"], "index": 0, "delete": 1, "insert": "H"},
                {"op": "increment", "path": ["n"], "by": -2},
                {"op": "insert", "path": ["a", "list", 1], "values": ["in", [7]]},
                {"op": "delete", "path": ["a", "list", 0]},
                {"op": "put", "path": ["a", "list", 0], "value": "set"},
                {"op": "delete", "path": ["a", "s"]},
                {"op": "delete", "path": ["t", 5], "count": 6},
            ]),
        )
        .unwrap();
        let want = json!({"a": {"list": ["set", [7], {"x": true}]}, "t": "Hello", "n": 3, "when": 1700000000000_i64});
        assert_eq!(to_json(&doc, &[], None).unwrap(), want);
        for op in patch_ops(doc.diff_incremental()) {
            apply_patch(&mut mirror, &[], &op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        }
        assert_eq!(mirror, want);
        assert_eq!(
            to_json(&doc, &[PathElem::Key("a".into()), PathElem::Key("list".into()), PathElem::Index(1)], None)
                .unwrap(),
            json!([7])
        );
    }

    #[test]
    fn bad_paths_and_types_have_their_codes_and_change_nothing() {
        let mut doc = AutoCommit::new();
        write(&mut doc, json!([{"op": "put", "path": ["m"], "value": {"s": "str", "l": [1]}}, {"op": "put", "path": ["t"], "value": "x", "as": "text"}])).unwrap();
        let before = to_json(&doc, &[], None).unwrap();
        assert_eq!(code(&mut doc, json!([{"op": "put", "path": ["nope", "x"], "value": 1}])), ErrorCode::PathNotFound);
        assert_eq!(
            code(&mut doc, json!([{"op": "put", "path": ["m", "s", "x"], "value": 1}])),
            ErrorCode::NotAContainer
        );
        assert_eq!(code(&mut doc, json!([{"op": "put", "path": ["m", 0], "value": 1}])), ErrorCode::WrongType);
        assert_eq!(code(&mut doc, json!([{"op": "put", "path": ["m", "l", "k"], "value": 1}])), ErrorCode::WrongType);
        assert_eq!(code(&mut doc, json!([{"op": "put", "path": ["m", "l", 5], "value": 1}])), ErrorCode::PathNotFound);
        assert_eq!(
            code(&mut doc, json!([{"op": "splice", "path": ["m", "s"], "index": 0, "insert": "x"}])),
            ErrorCode::NotAContainer
        );
        assert_eq!(
            code(&mut doc, json!([{"op": "splice", "path": ["m"], "index": 0, "insert": "x"}])),
            ErrorCode::WrongType
        );
        assert_eq!(
            code(&mut doc, json!([{"op": "splice", "path": ["t"], "index": 3, "insert": "x"}])),
            ErrorCode::PathNotFound
        );
        assert_eq!(code(&mut doc, json!([{"op": "increment", "path": ["m", "s"], "by": 1}])), ErrorCode::WrongType);
        assert_eq!(code(&mut doc, json!([{"op": "delete", "path": ["m", "zz"]}])), ErrorCode::PathNotFound);
        assert_eq!(
            code(&mut doc, json!([{"op": "put", "path": ["c"], "value": "x", "as": "counter"}])),
            ErrorCode::WrongType
        );
        assert_eq!(code(&mut doc, json!([{"op": "put", "path": [], "value": 1}])), ErrorCode::InvalidRequest);
        // A failing op undoes the ops before it in the same write.
        assert_eq!(
            code(&mut doc, json!([{"op": "put", "path": ["ok"], "value": 1}, {"op": "delete", "path": ["missing"]}])),
            ErrorCode::PathNotFound
        );
        assert_eq!(to_json(&doc, &[], None).unwrap(), before);
        assert_eq!(to_json(&doc, &[PathElem::Key("zz".into())], None).unwrap_err().code, ErrorCode::PathNotFound);
    }

    #[test]
    fn sizes_and_depths_are_checked() {
        let big: PatchOp =
            serde_json::from_value(json!({"op": "put", "path": ["a"], "value": "x".repeat(100)})).unwrap();
        assert_eq!(check_op(&big, 50).unwrap_err().code, ErrorCode::ValueTooLarge);
        assert!(check_op(&big, 500).is_ok());
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        let deep: PatchOp = serde_json::from_value(json!({"op": "put", "path": ["a"], "value": deep})).unwrap();
        assert_eq!(check_op(&deep, u64::MAX).unwrap_err().code, ErrorCode::ValueTooLarge);
    }

    #[test]
    fn revisions_name_changes_the_document_has() {
        let mut doc = AutoCommit::new();
        write(&mut doc, json!([{"op": "put", "path": ["a"], "value": 1}])).unwrap();
        let rev = revision(&doc.get_heads());
        assert_eq!(heads_of(&mut doc, &rev).unwrap(), doc.get_heads());
        let unknown = Revision(vec!["ab".repeat(32)]);
        assert_eq!(heads_of(&mut doc, &unknown).unwrap_err().code, ErrorCode::UnknownRevision);
        assert_eq!(heads_of(&mut doc, &Revision(vec!["xyz".into()])).unwrap_err().code, ErrorCode::InvalidRequest);
    }
}
