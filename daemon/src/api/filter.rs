//! Server-side filtering (`?filter=`), the `api_filtering` extension: expressions such as
//! `status eq Running and config.image.os eq busybox`, with `eq`/`ne`, `and`/`or`/`not`.
//! Fields are paths into the object's JSON (`name`, `status`, `config.limits.cpu`, …).

#[derive(Debug, Clone)]
struct Clause {
    negate: bool,
    field: String,
    equal: bool,
    value: String,
}

/// Clauses joined by `and`, groups joined by `or`.
#[derive(Debug, Clone)]
pub struct Filter {
    any_of: Vec<Vec<Clause>>,
}

fn tokens(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err("Invalid filter: unterminated quote".into());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

pub fn parse(s: &str) -> Result<Filter, String> {
    let toks = tokens(s)?;
    let mut any_of = vec![Vec::new()];
    let mut i = 0;
    while i < toks.len() {
        let mut negate = false;
        if toks[i].eq_ignore_ascii_case("not") {
            negate = true;
            i += 1;
        }
        let (field, op, value) = match (toks.get(i), toks.get(i + 1), toks.get(i + 2)) {
            (Some(f), Some(o), Some(v)) => (f, o, v),
            _ => return Err(format!("Invalid filter {s:?}: expected FIELD eq|ne VALUE")),
        };
        let equal = match op.to_ascii_lowercase().as_str() {
            "eq" => true,
            "ne" => false,
            other => return Err(format!("Invalid filter operator {other:?}")),
        };
        if let Some(group) = any_of.last_mut() {
            group.push(Clause {
                negate,
                field: field.clone(),
                equal,
                value: value.clone(),
            });
        }
        i += 3;
        match toks.get(i).map(|t| t.to_ascii_lowercase()) {
            None => break,
            Some(t) if t == "and" => i += 1,
            Some(t) if t == "or" => {
                any_of.push(Vec::new());
                i += 1
            }
            Some(t) => return Err(format!("Invalid filter: unexpected {t:?}")),
        }
        if i >= toks.len() {
            return Err(format!("Invalid filter {s:?}: dangling and/or"));
        }
    }
    Ok(Filter { any_of })
}

/// Looks a dotted field up; config keys themselves contain dots, so `config.` takes the
/// rest of the path as one key.
fn lookup<'a>(v: &'a serde_json::Value, field: &str) -> Option<&'a serde_json::Value> {
    for map in [
        "config.",
        "expanded_config.",
        "devices.",
        "expanded_devices.",
    ] {
        if let Some(key) = field.strip_prefix(map) {
            return v.get(map.trim_end_matches('.'))?.get(key);
        }
    }
    let mut cur = v;
    for part in field.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

impl Filter {
    pub fn matches(&self, v: &serde_json::Value) -> bool {
        self.any_of.iter().any(|group| {
            group.iter().all(|c| {
                let found = match lookup(v, &c.field) {
                    Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case(&c.value),
                    Some(other) => {
                        // Numbers and booleans compare by their JSON text.
                        let text = other.to_string();
                        text == c.value
                    }
                    None => false,
                };
                (found == c.equal) != c.negate
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn and_or_not() {
        let v = json!({"name": "c1", "status": "Running", "config": {"image.os": "busybox"}});
        assert!(parse("name eq c1").unwrap().matches(&v));
        assert!(!parse("name ne c1").unwrap().matches(&v));
        assert!(parse("status eq running and config.image.os eq busybox")
            .unwrap()
            .matches(&v));
        assert!(parse("name eq x or name eq c1").unwrap().matches(&v));
        assert!(parse("not name eq x").unwrap().matches(&v));
        assert!(parse("name eq 'c1'").unwrap().matches(&v));
    }

    #[test]
    fn malformed_filters_are_errors() {
        for bad in [
            "name",
            "name eq",
            "name like c1",
            "name eq c1 and",
            "name eq 'c1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
