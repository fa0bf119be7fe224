//! Function definitions in etcd (`<prefix>/functions/<name>`): what a gateway's deploy
//! writes and every node follows. A definition's etcd `mod_revision` names it across the
//! cluster (nodes publish the revision they deployed); its `version` (puts since the key
//! was created) is the function's version as users see it.

use ember_node::FunctionConfig;
use serde::{Deserialize, Serialize};

use crate::code::CodeRef;

/// Format of a definition; a node that reads a newer one does not deploy it, and says so.
pub const DEF_FORMAT: u32 = 1;

/// A definition larger than this is refused: a function's configuration is capped far
/// below it (env 4 KiB, 64 tags, ...).
pub const MAX_DEF_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub format: u32,
    pub name: String,
    pub config: FunctionConfig,
    pub code: CodeRef,
    /// Unix seconds of the first deploy under this name, and of this one.
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DefError {
    #[error("the definition of {name} is {size} bytes, over the cap of {MAX_DEF_BYTES}")]
    TooLarge { name: String, size: usize },
    #[error("the definition of {name} in etcd is not one: {why}")]
    Invalid { name: String, why: String },
    #[error(
        "the definition of {name} has format {format}, newer than this binary's {DEF_FORMAT}: \
         upgrade this node"
    )]
    Newer { name: String, format: u32 },
}

impl FunctionDef {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The definition stored under `name`, checked: size, format, that it names itself
    /// as its key does, and its configuration's rules.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<FunctionDef, DefError> {
        let invalid = |why: String| DefError::Invalid {
            name: name.to_string(),
            why,
        };
        if bytes.len() > MAX_DEF_BYTES {
            return Err(DefError::TooLarge {
                name: name.to_string(),
                size: bytes.len(),
            });
        }
        // The format first: a newer definition may not parse as this one.
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let f: Format = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if f.format > DEF_FORMAT {
            return Err(DefError::Newer {
                name: name.to_string(),
                format: f.format,
            });
        }
        let d: FunctionDef = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if d.name != name {
            return Err(invalid(format!("it names itself {:?}", d.name)));
        }
        ember_node::function::validate_name(name).map_err(|e| invalid(e.to_string()))?;
        d.config.validate().map_err(|e| invalid(e.to_string()))?;
        d.code.check().map_err(invalid)?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> FunctionDef {
        let config: FunctionConfig =
            serde_json::from_value(serde_json::json!({"handler": "main.handler"})).unwrap();
        FunctionDef {
            format: DEF_FORMAT,
            name: "hello".into(),
            config,
            code: CodeRef {
                key: "ab".repeat(32),
                sha256: "x".into(),
                size: 10,
            },
            created_at: 1,
            updated_at: 2,
        }
    }

    #[test]
    fn decode_checks_what_it_reads() {
        let d = def();
        assert_eq!(FunctionDef::decode("hello", &d.encode()).unwrap(), d);
        assert!(FunctionDef::decode("other", &d.encode()).is_err());
        let mut bad = d.clone();
        bad.config.memory_mb = 1;
        assert!(FunctionDef::decode("hello", &bad.encode()).is_err());
        let mut bad = d.clone();
        bad.code.key = "../etc".into();
        assert!(FunctionDef::decode("hello", &bad.encode()).is_err());
        let mut newer = serde_json::to_value(&d).unwrap();
        newer["format"] = serde_json::json!(DEF_FORMAT + 1);
        newer["config"] = serde_json::json!("something else");
        assert!(matches!(
            FunctionDef::decode("hello", newer.to_string().as_bytes()),
            Err(DefError::Newer { .. })
        ));
        assert!(FunctionDef::decode("hello", &vec![b' '; MAX_DEF_BYTES + 1]).is_err());
        assert!(FunctionDef::decode("hello", b"\xff\xfe").is_err());
    }
}
