//! The module being assembled: function declarations (so functions can call each other
//! before their bodies exist) and the final encoding with `wasm-encoder`.

use wasm_encoder::{
    CodeSection, ConstExpr, DataSection, EntityType, ExportKind, ExportSection, Function,
    FunctionSection, GlobalSection, GlobalType, ImportSection, MemorySection, MemoryType, Module,
    TypeSection, ValType,
};

pub struct Funcs {
    types: Vec<(Vec<ValType>, Vec<ValType>)>,
    /// Imported functions (module, name, type): they take the first indices.
    imports: Vec<(&'static str, &'static str, u32)>,
    decls: Vec<u32>,
    bodies: Vec<Option<Function>>,
}

impl Funcs {
    pub fn new() -> Funcs {
        Funcs {
            types: Vec::new(),
            imports: Vec::new(),
            decls: Vec::new(),
            bodies: Vec::new(),
        }
    }

    fn type_index(&mut self, params: &[ValType], results: &[ValType]) -> u32 {
        let signature = (params.to_vec(), results.to_vec());
        match self.types.iter().position(|t| *t == signature) {
            Some(i) => i as u32,
            None => {
                self.types.push(signature);
                self.types.len() as u32 - 1
            }
        }
    }

    /// Imports a host function; returns its index. Imports come before any declared
    /// function, whose indices follow them.
    pub fn import(
        &mut self,
        module: &'static str,
        name: &'static str,
        params: &[ValType],
        results: &[ValType],
    ) -> u32 {
        assert!(self.decls.is_empty(), "imports are declared first");
        let ty = self.type_index(params, results);
        self.imports.push((module, name, ty));
        self.imports.len() as u32 - 1
    }

    /// Declares a function; returns its index.
    pub fn declare(&mut self, params: &[ValType], results: &[ValType]) -> u32 {
        let ty = self.type_index(params, results);
        self.decls.push(ty);
        self.bodies.push(None);
        (self.imports.len() + self.decls.len()) as u32 - 1
    }

    pub fn define(&mut self, index: u32, body: Function) {
        self.bodies[index as usize - self.imports.len()] = Some(body);
    }
}

/// Everything besides functions that the module needs.
pub struct ModuleParts {
    pub pages: u64,
    pub data_base: u32,
    pub data: Vec<u8>,
    pub decide: u32,
    pub globals: Vec<(&'static str, u32)>,
}

/// Encodes the module. Every declared function must have been defined.
pub fn encode(funcs: Funcs, parts: ModuleParts) -> Vec<u8> {
    let mut module = Module::new();
    let mut types = TypeSection::new();
    for (params, results) in &funcs.types {
        types
            .ty()
            .function(params.iter().copied(), results.iter().copied());
    }
    module.section(&types);
    if !funcs.imports.is_empty() {
        let mut imports = ImportSection::new();
        for (module_name, name, ty) in &funcs.imports {
            imports.import(module_name, name, EntityType::Function(*ty));
        }
        module.section(&imports);
    }
    let mut functions = FunctionSection::new();
    for ty in &funcs.decls {
        functions.function(*ty);
    }
    module.section(&functions);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: parts.pages,
        maximum: Some(parts.pages),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    module.section(&memories);
    let mut globals = GlobalSection::new();
    for (_, value) in &parts.globals {
        globals.global(
            GlobalType {
                val_type: ValType::I32,
                mutable: false,
                shared: false,
            },
            &ConstExpr::i32_const(*value as i32),
        );
    }
    module.section(&globals);
    let mut exports = ExportSection::new();
    exports.export(edgepack_bundles::abi::export::MEMORY, ExportKind::Memory, 0);
    exports.export(
        edgepack_bundles::abi::export::DECIDE,
        ExportKind::Func,
        parts.decide,
    );
    for (i, (name, _)) in parts.globals.iter().enumerate() {
        exports.export(name, ExportKind::Global, i as u32);
    }
    module.section(&exports);
    let mut code = CodeSection::new();
    for body in funcs.bodies {
        code.function(&body.expect("every declared function is defined"));
    }
    module.section(&code);
    let mut data = DataSection::new();
    if !parts.data.is_empty() {
        data.active(0, &ConstExpr::i32_const(parts.data_base as i32), parts.data);
    }
    module.section(&data);
    module.finish()
}
