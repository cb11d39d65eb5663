//! The part of Python's pickle format that `torch.save` writes for tensors (`data.pkl` of
//! its zip archive), read into plain values without running anything: the only callables
//! honoured are `torch._utils._rebuild_tensor_v2`, which becomes a [`TensorView`] holding
//! the view's layout (not its data), and `collections.OrderedDict`.
//!
//! A pickle can copy any earlier value by reference (`BINGET`), so a few hundred bytes can
//! describe exponentially many values. Every value put on the stack is charged its
//! approximate size against [`MAX_VALUE_BYTES`], which bounds both the memory and the time
//! a hostile pickle can cost. Containers nest at most [`MAX_DEPTH`] deep, so walking or
//! dropping a value cannot overflow the stack.

use std::collections::HashMap;

/// Approximate bytes of values a pickle may build. The pickle of one tensor builds about
/// twenty small values; a dictionary of a few tensors with metadata, some thousands.
const MAX_VALUE_BYTES: usize = 8 << 20;

/// Deepest nesting of containers accepted (a saved tensor's pickle nests 3 deep).
const MAX_DEPTH: usize = 32;

/// A pickled value.
#[derive(Debug, Clone)]
pub(super) enum Value {
    /// `None`, a bool or a float: nothing a tensor's layout needs.
    Other,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A Python global, `module.name`, not yet called.
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorView),
}

/// A tensor storage named by the pickle's persistent id
/// `('storage', torch.<Class>, key, location, numel)`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StorageRef {
    /// `FloatStorage`, `BoolStorage`, ...
    pub class: String,
    /// Entry `data/<key>` of the archive.
    pub key: String,
    /// Elements the storage holds.
    pub numel: u64,
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`: a view of
/// `storage` (all in elements).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TensorView {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

impl Value {
    /// Approximate heap and inline bytes of the value.
    fn weight(&self) -> usize {
        let own = size_of::<Self>();
        own + match self {
            Self::Other | Self::Int(_) => 0,
            Self::Str(s) => s.len(),
            Self::Global(m, n) => m.len() + n.len(),
            Self::Storage(s) => s.class.len() + s.key.len(),
            Self::Tensor(t) => {
                t.storage.class.len() + t.storage.key.len() + 8 * (t.shape.len() + t.stride.len())
            }
            Self::Tuple(v) | Self::List(v) => v.iter().map(Self::weight).sum(),
            Self::Dict(v) => v.iter().map(|(k, v)| k.weight() + v.weight()).sum(),
        }
    }

    /// Whether containers nest more than `levels` deep in the value (looking no deeper).
    fn deeper_than(&self, levels: usize) -> bool {
        let Some(below) = levels.checked_sub(1) else {
            return matches!(self, Self::Tuple(_) | Self::List(_) | Self::Dict(_));
        };
        match self {
            Self::Tuple(v) | Self::List(v) => v.iter().any(|x| x.deeper_than(below)),
            Self::Dict(v) => v
                .iter()
                .any(|(k, x)| k.deeper_than(below) || x.deeper_than(below)),
            _ => false,
        }
    }

    /// The tensors in the value, in pickle order (dictionary values and sequence items,
    /// recursively).
    pub(super) fn tensors(&self) -> Vec<&TensorView> {
        match self {
            Self::Tensor(t) => vec![t],
            Self::Tuple(v) | Self::List(v) => v.iter().flat_map(Self::tensors).collect(),
            Self::Dict(v) => v.iter().flat_map(|(_, v)| v.tensors()).collect(),
            _ => Vec::new(),
        }
    }
}

/// Reads the pickle `data` into its root value.
pub(super) fn parse(data: &[u8]) -> Result<Value, String> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        spent: 0,
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Bytes charged so far (see [`MAX_VALUE_BYTES`]).
    spent: usize,
}

impl Machine<'_> {
    /// Runs opcodes until `STOP`. Each opcode belongs to exactly one group below, and
    /// each group answers `Ok(false)` for an opcode not its own, so the groups are tried
    /// in turn and an opcode none claims is refused.
    fn run(mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self.byte()?;
            if op == b'.' {
                return self.pop();
            }
            let known = self.framing_or_call(op, at)?
                || self.memo_op(op)?
                || self.container_op(op, at)?
                || self.scalar_op(op, at)?;
            if !known {
                return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}"));
            }
        }
    }

    /// The protocol header, globals and the two ways a pickle turns them into values:
    /// persistent ids (`BINPERSID`, a storage) and calls (`REDUCE`, see [`reduce`]).
    fn framing_or_call(&mut self, op: u8, at: usize) -> Result<bool, String> {
        match op {
            0x80 => {
                // PROTO
                let proto = self.byte()?;
                if !(2..=5).contains(&proto) {
                    return Err(format!("pickle protocol {proto} (expected 2 to 5)"));
                }
            }
            0x95 => {
                // FRAME: a length hint only.
                self.take(8)?;
            }
            b'c' => {
                // GLOBAL
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(module, name))?;
            }
            0x93 => {
                // STACK_GLOBAL
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n))?,
                    _ => return Err(format!("STACK_GLOBAL without names at byte {at}")),
                }
            }
            b'Q' => {
                // BINPERSID
                let pid = self.pop()?;
                self.push(Value::Storage(storage(pid)?))?;
            }
            b'R' => {
                // REDUCE
                let args = self.pop()?;
                let callable = self.pop()?;
                self.push(reduce(callable, args)?)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `PUT`s and `GET`s of the memo; both copy a value, and are charged for it (see
    /// [`Machine::put`] and [`Machine::get`]).
    fn memo_op(&mut self, op: u8) -> Result<bool, String> {
        match op {
            // BINPUT, LONG_BINPUT
            b'q' => {
                let i = self.byte()?.into();
                self.put(i)?;
            }
            b'r' => {
                let i = self.u32()?;
                self.put(i)?;
            }
            0x94 => {
                // MEMOIZE
                let i = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                self.put(i)?;
            }
            // BINGET, LONG_BINGET
            b'h' => {
                let i = self.byte()?.into();
                self.get(i)?;
            }
            b'j' => {
                let i = self.u32()?;
                self.get(i)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Marks, tuples, lists and dictionaries. Whatever goes into a container is checked
    /// by [`nestable`] first, so no value nests deeper than [`MAX_DEPTH`].
    fn container_op(&mut self, op: u8, at: usize) -> Result<bool, String> {
        match op {
            b'(' => self.marks.push(self.stack.len()), // MARK
            b't' => {
                // TUPLE
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items))?;
            }
            b')' => self.push(Value::Tuple(Vec::new()))?, // EMPTY_TUPLE
            0x85..=0x87 => {
                // TUPLE1, TUPLE2, TUPLE3
                let n = usize::from(op - 0x84);
                let from = self
                    .stack
                    .len()
                    .checked_sub(n)
                    .ok_or("stack underflow (TUPLE1-3)")?;
                let items = self.stack.split_off(from);
                nestable(&items)?;
                self.push(Value::Tuple(items))?;
            }
            b']' => self.push(Value::List(Vec::new()))?, // EMPTY_LIST
            b'a' => {
                // APPEND
                let item = self.pop()?;
                nestable([&item])?;
                self.list()?.push(item);
            }
            b'e' => {
                // APPENDS
                let items = self.pop_mark()?;
                self.list()?.extend(items);
            }
            b'}' => self.push(Value::Dict(Vec::new()))?, // EMPTY_DICT
            b's' => {
                // SETITEM
                let value = self.pop()?;
                let key = self.pop()?;
                nestable([&key, &value])?;
                self.dict()?.push((key, value));
            }
            b'u' => self.set_items(at)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// SETITEMS: the key-value pairs above the last mark go into the dictionary below it.
    fn set_items(&mut self, at: usize) -> Result<(), String> {
        let items = self.pop_mark()?;
        if items.len() % 2 != 0 {
            return Err(format!("SETITEMS with an odd item count at byte {at}"));
        }
        let mut items = items.into_iter();
        let dict = self.dict()?;
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            dict.push((k, v));
        }
        Ok(())
    }

    /// Strings, integers and the constants a tensor's layout does not need (floats,
    /// `None`, booleans), which become [`Value::Other`].
    fn scalar_op(&mut self, op: u8, at: usize) -> Result<bool, String> {
        match op {
            // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
            b'X' => {
                let n = self.u32()? as usize;
                self.string(n)?;
            }
            0x8c => {
                let n = self.byte()?.into();
                self.string(n)?;
            }
            0x8d => {
                let n = usize::try_from(self.u64()?).map_err(|_| "string too long")?;
                self.string(n)?;
            }
            // BININT, BININT1, BININT2
            b'J' => {
                let v = i32::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()))?;
            }
            b'K' => {
                let v = self.byte()?;
                self.push(Value::Int(v.into()))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()))?;
            }
            0x8a => {
                // LONG1
                let v = self.long1(at)?;
                self.push(Value::Int(v))?;
            }
            b'G' => {
                // BINFLOAT
                self.take(8)?;
                self.push(Value::Other)?;
            }
            // NONE, NEWTRUE, NEWFALSE
            b'N' | 0x88 | 0x89 => self.push(Value::Other)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The operand of LONG1: little-endian two's complement of n bytes, at most 8 (the
    /// sizes and strides of a tensor fit an `i64`).
    fn long1(&mut self, at: usize) -> Result<i64, String> {
        let n = usize::from(self.byte()?);
        if n > 8 {
            return Err(format!("an integer of {n} bytes at byte {at}"));
        }
        let bytes = self.take(n)?;
        let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut le = [fill; 8];
        le[..n].copy_from_slice(bytes);
        Ok(i64::from_le_bytes(le))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| "ends before its STOP opcode".to_string())?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        Ok(bytes.try_into().unwrap_or([0; N]))
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A newline-terminated line (the arguments of `GLOBAL`).
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("GLOBAL without a newline")?;
        let line = String::from_utf8(rest[..len].to_vec()).map_err(|_| "GLOBAL not UTF-8")?;
        self.pos += len + 1;
        Ok(line)
    }

    fn string(&mut self, n: usize) -> Result<(), String> {
        let bytes = self.take(n)?.to_vec();
        let s = String::from_utf8(bytes).map_err(|_| "a string that is not UTF-8")?;
        self.push(Value::Str(s))
    }

    fn charge(&mut self, bytes: usize) -> Result<(), String> {
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > MAX_VALUE_BYTES {
            return Err(format!(
                "builds more than {} MiB of values (the pickle of a tensor builds a few hundred bytes)",
                MAX_VALUE_BYTES >> 20
            ));
        }
        Ok(())
    }

    fn push(&mut self, value: Value) -> Result<(), String> {
        self.charge(value.weight())?;
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK")?;
        if mark > self.stack.len() {
            return Err("MARK above the stack".into());
        }
        let items = self.stack.split_off(mark);
        nestable(&items)?;
        Ok(items)
    }

    fn put(&mut self, index: u32) -> Result<(), String> {
        // Charged before the copy is made.
        let weight = self.stack.last().ok_or("PUT on an empty stack")?.weight();
        self.charge(weight)?;
        let copy = self.stack.last().cloned().unwrap_or(Value::Other);
        self.memo.insert(index, copy);
        Ok(())
    }

    fn get(&mut self, index: u32) -> Result<(), String> {
        // Charged before the copy is made.
        let weight = self
            .memo
            .get(&index)
            .ok_or("GET of an unset memo")?
            .weight();
        self.charge(weight)?;
        let copy = self.memo.get(&index).cloned().unwrap_or(Value::Other);
        self.stack.push(copy);
        Ok(())
    }

    fn list(&mut self) -> Result<&mut Vec<Value>, String> {
        match self.stack.last_mut() {
            Some(Value::List(v)) => Ok(v),
            _ => Err("APPEND to something not a list".into()),
        }
    }

    fn dict(&mut self) -> Result<&mut Vec<(Value, Value)>, String> {
        match self.stack.last_mut() {
            Some(Value::Dict(v)) => Ok(v),
            _ => Err("SETITEM on something not a dict".into()),
        }
    }
}

/// Refuses `items` as the content of a container if that would nest deeper than
/// [`MAX_DEPTH`].
fn nestable<'v>(items: impl IntoIterator<Item = &'v Value>) -> Result<(), String> {
    if items.into_iter().any(|v| v.deeper_than(MAX_DEPTH - 1)) {
        return Err(format!("nests containers more than {MAX_DEPTH} deep"));
    }
    Ok(())
}

/// The storage of a persistent id `('storage', torch.<Class>, key, location, numel)`.
fn storage(pid: Value) -> Result<StorageRef, String> {
    if let Value::Tuple(items) = pid
        && let [
            Value::Str(kind),
            Value::Global(module, class),
            Value::Str(key),
            _,
            Value::Int(numel),
        ] = &items[..]
        && kind == "storage"
        && module == "torch"
        && let Ok(numel) = u64::try_from(*numel)
    {
        return Ok(StorageRef {
            class: class.clone(),
            key: key.clone(),
            numel,
        });
    }
    Err("a persistent id that is not a tensor storage".into())
}

/// Calls `callable(*args)` for the two callables a saved tensor uses.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let (Value::Global(module, name), Value::Tuple(args)) = (callable, args) else {
        return Err("REDUCE of something not a global".into());
    };
    match (module.as_str(), name.as_str(), &args[..]) {
        ("collections", "OrderedDict", []) => Ok(Value::Dict(Vec::new())),
        (
            "torch._utils",
            "_rebuild_tensor_v2",
            [
                Value::Storage(storage),
                Value::Int(offset),
                Value::Tuple(shape),
                Value::Tuple(stride),
                ..,
            ],
        ) if (6..=7).contains(&args.len()) => {
            let ints = |v: &[Value], what: &str| {
                v.iter()
                    .map(|d| match d {
                        Value::Int(i) => u64::try_from(*i).ok(),
                        _ => None,
                    })
                    .collect::<Option<Vec<u64>>>()
                    .ok_or_else(|| {
                        format!("a tensor whose {what} is not a tuple of non-negative integers")
                    })
            };
            Ok(Value::Tensor(TensorView {
                storage: storage.clone(),
                offset: u64::try_from(*offset).map_err(|_| "a negative storage offset")?,
                shape: ints(shape, "size")?,
                stride: ints(stride, "stride")?,
            }))
        }
        _ => Err(format!(
            "calls {module}.{name} with {} arguments, which a tensor saved by torch.save does not",
            args.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_copies_are_charged_so_a_small_pickle_cannot_build_a_huge_value() {
        // [] memoised, then repeatedly: MARK, 16 × GET 0, TUPLE, PUT 0 — each round
        // multiplies the value by 16.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..8 {
            p.push(b'(');
            for _ in 0..16 {
                p.extend([b'h', 0]);
            }
            p.extend([b't', b'q', 0]);
        }
        p.push(b'.');
        let err = parse(&p).unwrap_err();
        assert!(err.contains("MiB of values"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_before_it_can_overflow_the_stack() {
        // 10 000 empty lists, each appended to the one before.
        let mut p = vec![0x80, 2];
        p.extend([b']'; 10_000]);
        p.extend([b'a'; 9_999]);
        p.push(b'.');
        let err = parse(&p).unwrap_err();
        assert!(err.contains("more than 32 deep"), "{err}");
        let mut p = vec![0x80, 2, b')'];
        p.extend([0x85; 31]);
        p.push(b'.');
        assert!(parse(&p).is_ok(), "32 deep");
    }

    #[test]
    fn nothing_but_the_tensor_rebuild_is_called() {
        let p = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.";
        let err = parse(p).unwrap_err();
        assert!(err.contains("calls os.system"), "{err}");
        assert!(parse(b"\x80\x02K\x07").unwrap_err().contains("STOP"));
        assert!(parse(b"\x80\x02\x8a\x09").unwrap_err().contains("9 bytes"));
    }
}
