//! The safetensors format, read and written tensor by tensor: an 8-byte little-endian header
//! length, a JSON header (`{name: {dtype, shape, data_offsets}, "__metadata__": {..}}`), then
//! the little-endian data. Reading seeks to one tensor at a time and writing streams one tensor
//! at a time, so neither holds a second copy of the weights.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use serde_json::{Map, Value};

use super::config::checkpoint_error;
use crate::error::Result;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    begin: u64,
    end: u64,
}

/// An opened safetensors file: its header, read; data read on demand.
pub(crate) struct SafetensorsFile {
    pub path: PathBuf,
    pub entries: BTreeMap<String, Entry>,
    data_start: u64,
}

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        _ => return None,
    })
}

fn dtype_name(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        _ => return None,
    })
}

impl SafetensorsFile {
    /// Opens `path` and parses its header.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |reason: String| checkpoint_error(path, None, reason);
        let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|e| err(format!("no safetensors header: {e}")))?;
        let len = u64::from_le_bytes(len);
        let file_len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        if len > file_len.saturating_sub(8) || len > 100 << 20 {
            return Err(err(format!(
                "header length {len} does not fit the file ({file_len} bytes)"
            )));
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header)
            .map_err(|e| err(e.to_string()))?;
        let header: Map<String, Value> = serde_json::from_slice(&header)
            .map_err(|e| err(format!("header is not a JSON object: {e}")))?;
        let data_start = 8 + len;
        let data_len = file_len - data_start;
        let mut entries = BTreeMap::new();
        for (name, value) in header {
            if name == "__metadata__" {
                continue;
            }
            let bad =
                |what: &str| checkpoint_error(path, Some(&name), format!("header entry: {what}"));
            let dtype_str = value
                .get("dtype")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no dtype"))?;
            let dtype = dtype_of(dtype_str).ok_or_else(|| {
                bad(&format!(
                    "dtype {dtype_str} is not a float dtype this crate reads (F32, F16, BF16, F64)"
                ))
            })?;
            let shape: Vec<usize> = value
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("shape is not a list of integers"))?;
            let offsets = value
                .get("data_offsets")
                .and_then(Value::as_array)
                .filter(|o| o.len() == 2)
                .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
                .ok_or_else(|| bad("no data_offsets [begin, end]"))?;
            let bytes = shape.iter().product::<usize>() as u64 * dtype.size() as u64;
            if offsets.1 < offsets.0 || offsets.1 - offsets.0 != bytes || offsets.1 > data_len {
                return Err(bad(&format!(
                    "data_offsets {offsets:?} do not hold {bytes} bytes of {dtype_str} {shape:?} in {data_len} data bytes"
                )));
            }
            entries.insert(
                name,
                Entry {
                    dtype,
                    shape,
                    begin: offsets.0,
                    end: offsets.1,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries,
            data_start,
        })
    }

    /// The data of tensor `name` (its own dtype; little-endian bytes as stored).
    pub fn read(&self, name: &str) -> Result<TensorData> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| checkpoint_error(&self.path, Some(name), "not in this file"))?;
        let err = |e: std::io::Error| checkpoint_error(&self.path, Some(name), e);
        let mut file = File::open(&self.path).map_err(err)?;
        file.seek(SeekFrom::Start(self.data_start + entry.begin))
            .map_err(err)?;
        let mut bytes = vec![0u8; (entry.end - entry.begin) as usize];
        file.read_exact(&mut bytes).map_err(err)?;
        #[cfg(target_endian = "big")]
        compile_error!("safetensors data is little-endian; big-endian targets are not supported");
        Ok(TensorData::from_bytes_vec(
            bytes,
            entry.shape.clone(),
            entry.dtype,
        ))
    }
}

/// A tensor to write: its name, dtype, shape and a callback producing its bytes (called once,
/// in file order, so only one tensor's bytes exist at a time).
pub(crate) struct Pending<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Box<dyn FnOnce() -> Vec<u8> + 'a>,
}

impl Pending<'_> {
    pub fn size(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// Writes `tensors` to `path` with `metadata` (atomically: a temporary file renamed).
pub(crate) fn write(
    path: &Path,
    tensors: Vec<Pending<'_>>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut header = Map::new();
    header.insert(
        "__metadata__".into(),
        Value::Object(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    );
    let mut offset = 0u64;
    for t in &tensors {
        let dtype = dtype_name(t.dtype).ok_or_else(|| {
            checkpoint_error(
                path,
                Some(&t.name),
                format!("cannot store dtype {:?}", t.dtype),
            )
        })?;
        let end = offset + t.size();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).expect("JSON of strings");
    // Pad the header with spaces to 8 bytes, as the reference implementation does.
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let tmp = path.with_extension("safetensors.tmp");
    let err = |e: std::io::Error| checkpoint_error(path, None, e);
    let mut out = BufWriter::new(File::create(&tmp).map_err(err)?);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(err)?;
    out.write_all(&header).map_err(err)?;
    for t in tensors {
        let (name, size) = (t.name.clone(), t.size());
        let bytes = (t.bytes)();
        if bytes.len() as u64 != size {
            return Err(checkpoint_error(
                path,
                Some(&name),
                format!("{} bytes produced for a {size}-byte entry", bytes.len()),
            ));
        }
        out.write_all(&bytes).map_err(err)?;
    }
    out.flush().map_err(err)?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(err)
}
