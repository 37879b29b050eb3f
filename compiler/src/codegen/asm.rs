//! A small assembler over `wasm-encoder`: functions with named locals, memory shorthands,
//! and a data image laid out at fixed addresses.
//!
//! Generated code reads tables at addresses known when the module is built, so every memory
//! access is `i32.const base` plus a static offset; these helpers keep that readable.

use wasm_encoder::{BlockType, Function, InstructionSink, MemArg, ValType};

pub const I32: ValType = ValType::I32;
pub const I64: ValType = ValType::I64;

/// One function being written.
pub struct Asm {
    params: u32,
    locals: Vec<ValType>,
    body: Vec<u8>,
}

impl Asm {
    pub fn new(params: u32) -> Asm {
        Asm {
            params,
            locals: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A new local of type `ty`; returns its index.
    pub fn local(&mut self, ty: ValType) -> u32 {
        self.locals.push(ty);
        self.params + self.locals.len() as u32 - 1
    }

    pub fn i(&mut self) -> InstructionSink<'_> {
        InstructionSink::new(&mut self.body)
    }

    pub fn finish(mut self) -> Function {
        InstructionSink::new(&mut self.body).end();
        let mut f = Function::new_with_locals_types(self.locals);
        f.raw(self.body);
        f
    }

    // Shorthands used everywhere below.

    pub fn get(&mut self, local: u32) -> &mut Self {
        self.i().local_get(local);
        self
    }

    pub fn set(&mut self, local: u32) -> &mut Self {
        self.i().local_set(local);
        self
    }

    pub fn tee(&mut self, local: u32) -> &mut Self {
        self.i().local_tee(local);
        self
    }

    pub fn c(&mut self, value: u32) -> &mut Self {
        self.i().i32_const(value as i32);
        self
    }

    /// `local = value`
    pub fn set_c(&mut self, local: u32, value: u32) -> &mut Self {
        self.c(value).set(local)
    }

    /// Pushes the u32 at absolute address `addr`.
    pub fn load_abs(&mut self, addr: u32) -> &mut Self {
        self.i().i32_const(0).i32_load(mem(addr, 2));
        self
    }

    /// Stores the value on the stack (pushed by `value`) at absolute address `addr`.
    pub fn store_abs(&mut self, addr: u32, value: impl FnOnce(&mut Asm)) -> &mut Self {
        self.i().i32_const(0);
        value(self);
        self.i().i32_store(mem(addr, 2));
        self
    }

    /// Pushes the u32 at `local + offset`.
    pub fn load(&mut self, local: u32, offset: u32) -> &mut Self {
        self.i().local_get(local).i32_load(mem(offset, 2));
        self
    }

    pub fn load8(&mut self, local: u32, offset: u32) -> &mut Self {
        self.i().local_get(local).i32_load8_u(mem(offset, 0));
        self
    }

    pub fn block(&mut self) -> &mut Self {
        self.i().block(BlockType::Empty);
        self
    }

    pub fn loop_(&mut self) -> &mut Self {
        self.i().loop_(BlockType::Empty);
        self
    }

    pub fn if_(&mut self) -> &mut Self {
        self.i().if_(BlockType::Empty);
        self
    }

    /// An `if` whose arms each leave one `i32`.
    pub fn if_with_result(&mut self) -> &mut Self {
        self.i().if_(BlockType::Result(I32));
        self
    }

    pub fn else_(&mut self) -> &mut Self {
        self.i().else_();
        self
    }

    pub fn end(&mut self) -> &mut Self {
        self.i().end();
        self
    }

    /// `local += delta`
    pub fn inc(&mut self, local: u32, delta: u32) -> &mut Self {
        self.get(local).c(delta);
        self.i().i32_add();
        self.set(local)
    }

    /// Returns the constant `value` from the function.
    pub fn ret_c(&mut self, value: u32) -> &mut Self {
        self.c(value);
        self.i().return_();
        self
    }
}

pub fn mem(offset: u32, align: u32) -> MemArg {
    MemArg {
        offset: u64::from(offset),
        align,
        memory_index: 0,
    }
}

/// The tables of a module, laid out from a base address.
pub struct Data {
    pub base: u32,
    pub bytes: Vec<u8>,
}

impl Data {
    pub fn new(base: u32) -> Data {
        Data {
            base,
            bytes: Vec::new(),
        }
    }

    /// The address the next byte will have.
    pub fn here(&self) -> u32 {
        self.base + self.bytes.len() as u32
    }

    pub fn align(&mut self, to: usize) {
        while !self.bytes.len().is_multiple_of(to) {
            self.bytes.push(0);
        }
    }

    /// Appends bytes; returns their address.
    pub fn bytes(&mut self, bytes: &[u8]) -> u32 {
        let at = self.here();
        self.bytes.extend_from_slice(bytes);
        at
    }

    /// Appends u32s (4-aligned); returns their address.
    pub fn words(&mut self, words: &[u32]) -> u32 {
        self.align(4);
        let at = self.here();
        for w in words {
            self.bytes.extend_from_slice(&w.to_le_bytes());
        }
        at
    }
}
