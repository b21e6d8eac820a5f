// Every ```ts block of README.md and docs/*.md is type-checked against the
// package's public exports, imported by its name (`vmm-migration`, a
// package.json "exports" self-reference, which TypeScript maps back to the
// sources), so a doc cannot show a name the package does not export.
//
// A block is one of:
// - a usage snippet: compiled as its own module. The embedder's own objects
//   it uses (guest memory, vCPUs...) come from a prelude in an HTML comment
//   just above it, invisible in the rendered doc:
//     <!-- snippet-prelude
//     declare const guestRam: Uint8Array
//     -->
//   `<!-- snippets-prelude ... -->` applies to every later block of the file.
//   A prelude may only import from the package (or node:) and `declare`
//   things, and may not declare a name the package exports: it supplies what
//   the embedder owns, never what the library should.
// - a signature listing, marked `<!-- snippet-listing vmm-migration/native -->`:
//   declarations without bodies. Each listed class, function, interface and
//   type must be an export of that module, and each listed member must exist
//   there with a type assignable one way or the other to the real one (for a
//   function: each parameter and the result): a listing may simplify
//   `Buffer | null` to `Buffer`, not name a method the module lacks or give
//   it unrelated types. A listing may import types from the package.
import t from 'tap'
import ts from 'typescript'
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..')
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; exports: Record<string, unknown> }
/** Every specifier the package exports: 'vmm-migration', 'vmm-migration/native', ... */
const ENTRY_POINTS = Object.keys(PKG.exports).map(k => (k === '.' ? PKG.name : `${PKG.name}/${k.slice(2)}`))
/** Snippets are virtual files here, inside the package, so its name resolves to itself. */
const VDIR = join(ROOT, 'tests/docs/.snippets')

interface Block {
  doc: string
  /** 1-based line of the block's first code line in the doc. */
  line: number
  code: string
  prelude: string
  /** For a listing: the module it lists. */
  listing?: string
}

const MARKER = /^<!--\s*(snippet-prelude|snippets-prelude|snippet-listing)\b([\s\S]*?)-->$/

/** The ```ts blocks of one markdown file, with the comment markers that precede them. */
function extract(doc: string, text: string): Block[] {
  const lines = text.split('\n')
  const blocks: Block[] = []
  let filePrelude = ''
  let pending: { kind: string; body: string } | undefined
  for (let i = 0; i < lines.length; i++) {
    const trimmed = lines[i].trim()
    if (trimmed.startsWith('<!--')) {
      let j = i
      let comment = trimmed
      while (!comment.endsWith('-->') && j + 1 < lines.length) comment += '\n' + lines[++j].trim()
      const m = MARKER.exec(comment)
      if (m) {
        if (m[1] === 'snippets-prelude') filePrelude += m[2] + '\n'
        else pending = { kind: m[1], body: m[2].trim() }
      }
      i = j
      continue
    }
    const fence = /^(\s*)```(\S*)\s*$/.exec(lines[i])
    if (!fence) {
      // A marker belongs to the block right after it (blank lines allowed).
      if (trimmed !== '') pending = undefined
      continue
    }
    const indent = fence[1].length
    const start = i + 1
    let end = start
    while (end < lines.length && !/^\s*```\s*$/.test(lines[end])) end++
    if (fence[2] === 'ts') {
      const code = lines.slice(start, end).map(l => l.slice(Math.min(indent, l.length - l.trimStart().length))).join('\n')
      const b: Block = { doc, line: start + 1, code, prelude: filePrelude }
      if (pending?.kind === 'snippet-prelude') b.prelude += pending.body + '\n'
      if (pending?.kind === 'snippet-listing') b.listing = pending.body
      blocks.push(b)
    }
    pending = undefined
    i = end
  }
  return blocks
}

const docs = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter(f => f.endsWith('.md')).sort().map(f => `docs/${f}`)]
const blocks = docs.flatMap(d => extract(d, readFileSync(join(ROOT, d), 'utf8')))

// ---- one program over every block ----

const parsed = ts.getParsedCommandLineOfConfigFile(join(ROOT, 'tsconfig.json'), {}, {
  ...ts.sys,
  onUnRecoverableConfigFileDiagnostic: d => { throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n')) },
})!
const options: ts.CompilerOptions = { ...parsed.options, noEmit: true }

interface Virtual {
  block: Block
  file: string
  text: string
  /** Lines before the block's first line in `text`. */
  offset: number
}

const virtuals: Virtual[] = blocks.map((block, i) => {
  const base = `${block.doc.replace(/[/.]/g, '_')}_${block.line}_${i}`
  if (block.listing) {
    // The listing's own declarations; anything else it names comes from the module.
    const head = `import type * as __listed from '${block.listing}'\n`
    return { block, file: join(VDIR, `${base}.d.ts`), text: `${head}${block.code}\n`, offset: 1 }
  }
  const head = block.prelude.trim() === '' ? '' : block.prelude.trim() + '\n'
  const offset = head === '' ? 0 : head.split('\n').length - 1
  return { block, file: join(VDIR, `${base}.ts`), text: `${head}${block.code}\nexport {}\n`, offset }
})
const byFile = new Map(virtuals.map(v => [v.file, v]))

const host = ts.createCompilerHost(options)
const { fileExists, readFile, getSourceFile } = host
host.fileExists = f => byFile.has(f) || fileExists.call(host, f)
host.readFile = f => byFile.get(f)?.text ?? readFile.call(host, f)
host.getSourceFile = (f, lang, ...rest) => {
  const v = byFile.get(f)
  return v ? ts.createSourceFile(f, v.text, lang, true) : getSourceFile.call(host, f, lang, ...rest)
}

/** Listings name other types of their module (RamSendBlock, TransferOptions...): give them every export not listed. */
function withModuleTypes(program: ts.Program): ts.Program {
  const checker = program.getTypeChecker()
  let changed = false
  for (const v of virtuals) {
    if (!v.block.listing) continue
    const sf = program.getSourceFile(v.file)!
    const mod = checker.getSymbolAtLocation((sf.statements[0] as ts.ImportDeclaration).moduleSpecifier)
    if (!mod) continue
    const listed = new Set(listedDeclarations(sf).map(d => d.name))
    const names = checker.getExportsOfModule(mod).map(s => s.name).filter(n => !listed.has(n))
    const head = `import type * as __listed from '${v.block.listing}'\n` +
      (names.length ? `import type { ${names.join(', ')} } from '${v.block.listing}'\n` : '')
    v.text = `${head}${v.block.code}\n`
    v.offset = head.split('\n').length - 1
    changed = true
  }
  return changed ? ts.createProgram({ rootNames: virtuals.map(v => v.file), options, host }) : program
}

interface Listed {
  name: string
  node: ts.ClassDeclaration | ts.FunctionDeclaration | ts.InterfaceDeclaration | ts.TypeAliasDeclaration
}

function listedDeclarations(sf: ts.SourceFile): Listed[] {
  const out: Listed[] = []
  for (const s of sf.statements) {
    if ((ts.isClassDeclaration(s) || ts.isFunctionDeclaration(s) || ts.isInterfaceDeclaration(s) || ts.isTypeAliasDeclaration(s)) && s.name) {
      out.push({ name: s.name.text, node: s })
    }
  }
  return out
}

const program = withModuleTypes(ts.createProgram({ rootNames: virtuals.map(v => v.file), options, host }))
const checker = program.getTypeChecker()

function where(v: Virtual, pos: number): string {
  const sf = program.getSourceFile(v.file)!
  const { line } = sf.getLineAndCharacterOfPosition(pos)
  return `${v.block.doc}:${v.block.line + line - v.offset}`
}

function diagnostics(v: Virtual): string[] {
  const sf = program.getSourceFile(v.file)!
  return [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)].map(d =>
    `${d.start === undefined ? v.block.doc : where(v, d.start)}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`)
}

/** Names every entry point of the package exports. */
const packageExports = new Set<string>()
{
  const probe = join(VDIR, '__exports.ts')
  const text = ENTRY_POINTS.map((e, i) => `import * as m${i} from '${e}'`).join('\n') + '\nexport {}\n'
  byFile.set(probe, { block: { doc: 'package.json', line: 0, code: '', prelude: '' }, file: probe, text, offset: 0 })
  const p = ts.createProgram({ rootNames: [probe], options, host })
  const c = p.getTypeChecker()
  for (const s of p.getSourceFile(probe)!.statements.filter(ts.isImportDeclaration)) {
    const mod = c.getSymbolAtLocation(s.moduleSpecifier)
    if (!mod) throw new Error(`package.json exports ${s.moduleSpecifier.getText()}, which does not resolve`)
    for (const e of c.getExportsOfModule(mod)) packageExports.add(e.name)
  }
  byFile.delete(probe)
}

/** A prelude supplies the embedder's objects: package imports and declarations only, never a package export. */
function preludeProblems(b: Block): string[] {
  const sf = ts.createSourceFile('prelude.ts', b.prelude, ts.ScriptTarget.ES2022, true)
  const out: string[] = []
  const declared = (name: ts.Node | undefined) => {
    if (name && ts.isIdentifier(name) && packageExports.has(name.text)) {
      out.push(`the prelude declares ${name.text}, which the package exports: import it in the snippet instead`)
    }
  }
  for (const s of sf.statements) {
    if (ts.isImportDeclaration(s)) {
      const from = (s.moduleSpecifier as ts.StringLiteral).text
      if (!ENTRY_POINTS.includes(from) && !from.startsWith('node:')) out.push(`the prelude imports '${from}', which is not the package`)
      continue
    }
    if (ts.isInterfaceDeclaration(s) || ts.isTypeAliasDeclaration(s)) {
      declared(s.name)
      continue
    }
    const isDeclare = ts.canHaveModifiers(s) && ts.getModifiers(s)?.some(m => m.kind === ts.SyntaxKind.DeclareKeyword)
    if (!isDeclare) {
      out.push(`the prelude runs code (${s.getText().split('\n')[0]}); it may only declare the embedder's objects`)
      continue
    }
    if (ts.isVariableStatement(s)) for (const d of s.declarationList.declarations) declared(d.name)
    else if (ts.isFunctionDeclaration(s) || ts.isClassDeclaration(s)) declared(s.name)
  }
  return out
}

/** What a listing claims that its module does not provide. */
function listingProblems(v: Virtual): string[] {
  const sf = program.getSourceFile(v.file)!
  const mod = checker.getSymbolAtLocation((sf.statements[0] as ts.ImportDeclaration).moduleSpecifier)
  if (!mod) return [`${v.block.doc}:${v.block.line}: '${v.block.listing}' is not an entry point of the package`]
  const exports = new Map(checker.getExportsOfModule(mod).map(s => [s.name, s]))
  const out: string[] = []
  // One way or the other, and for a function part by part: a listing may
  // show `options?: TransferOptions` for `TransferOptions | null` and the
  // documented values of a result field typed `string`, in one signature.
  const compatible = (a: ts.Type, b: ts.Type): boolean => {
    if (checker.isTypeAssignableTo(a, b) || checker.isTypeAssignableTo(b, a)) return true
    const [as, bs] = [a.getCallSignatures(), b.getCallSignatures()]
    if (as.length !== 1 || bs.length !== 1 || as[0].parameters.length > bs[0].parameters.length) return false
    const param = (sig: ts.Signature, i: number) => checker.getTypeOfSymbol(sig.parameters[i])
    return as[0].parameters.every((_, i) => compatible(param(as[0], i), param(bs[0], i))) &&
      compatible(as[0].getReturnType(), bs[0].getReturnType())
  }
  const members = (what: string, at: ts.Node, doc: ts.Type, real: ts.Type) => {
    for (const p of doc.getProperties()) {
      if (p.name === 'prototype') continue
      const rp = real.getProperty(p.name)
      if (!rp) {
        out.push(`${where(v, (p.declarations?.[0] ?? at).getStart())}: ${what}.${p.name} is listed, but ${v.block.listing} has no such member`)
        continue
      }
      const dt = checker.getTypeOfSymbolAtLocation(p, at)
      const rt = checker.getTypeOfSymbolAtLocation(rp, at)
      if (!compatible(dt, rt)) {
        out.push(`${where(v, (p.declarations?.[0] ?? at).getStart())}: ${what}.${p.name} is listed as ${checker.typeToString(dt)}, ` +
          `but is ${checker.typeToString(rt)}`)
      }
    }
  }
  for (const { name, node } of listedDeclarations(sf)) {
    const real = exports.get(name)
    if (!real) {
      out.push(`${where(v, node.getStart())}: ${name} is listed, but ${v.block.listing} does not export it`)
      continue
    }
    const docSym = checker.getSymbolAtLocation(node.name!)!
    if (ts.isClassDeclaration(node)) {
      members(name, node, checker.getDeclaredTypeOfSymbol(docSym), checker.getDeclaredTypeOfSymbol(real))
      members(name, node, checker.getTypeOfSymbolAtLocation(docSym, node), checker.getTypeOfSymbolAtLocation(real, node))
    } else if (ts.isInterfaceDeclaration(node)) {
      members(name, node, checker.getDeclaredTypeOfSymbol(docSym), checker.getDeclaredTypeOfSymbol(real))
    } else {
      const dt = ts.isFunctionDeclaration(node) ? checker.getTypeOfSymbolAtLocation(docSym, node) : checker.getDeclaredTypeOfSymbol(docSym)
      const rt = ts.isFunctionDeclaration(node) ? checker.getTypeOfSymbolAtLocation(real, node) : checker.getDeclaredTypeOfSymbol(real)
      if (!compatible(dt, rt)) out.push(`${where(v, node.getStart())}: ${name} is listed as ${checker.typeToString(dt)}, but is ${checker.typeToString(rt)}`)
    }
  }
  return out
}

t.test('the docs have TypeScript snippets to check', async t => {
  t.ok(blocks.length >= 10, `${blocks.length} blocks in ${docs.length} files`)
  t.ok(blocks.some(b => b.doc === 'docs/embedding.md'), 'docs/embedding.md among them')
  t.ok(blocks.some(b => b.doc === 'README.md'), 'README.md among them')
})

for (const v of virtuals) {
  const b = v.block
  t.test(`${b.doc}:${b.line}${b.listing ? ` (listing of ${b.listing})` : ''}`, async t => {
    const problems = [...preludeProblems(b), ...diagnostics(v), ...(b.listing ? listingProblems(v) : [])]
    t.same(problems, [], problems.length ? problems.join('\n') : 'type-checks against the package exports')
  })
}

t.test('the marker parser: preludes, listings, indented fences', async t => {
  const md = [
    '<!-- snippets-prelude',
    'declare const a: number',
    '-->',
    '```ts',
    'one',
    '```',
    '<!-- snippet-prelude declare const b: string -->',
    '',
    '  ```ts',
    '  two',
    '    deeper',
    '  ```',
    '<!-- snippet-listing vmm-migration/native -->',
    '```ts',
    'class X {}',
    '```',
    '<!-- snippet-prelude declare const c: 1 -->',
    'text between: the marker no longer applies',
    '```ts',
    'three',
    '```',
    '```sh',
    'not ts',
    '```',
  ].join('\n')
  const got = extract('x.md', md)
  t.equal(got.length, 4)
  t.match(got[0], { line: 5, code: 'one', listing: undefined })
  t.match(got[0].prelude, /declare const a: number/)
  t.match(got[1], { line: 10, code: 'two\n  deeper' })
  t.match(got[1].prelude, /declare const a[\s\S]*declare const b: string/)
  t.match(got[2], { listing: 'vmm-migration/native', code: 'class X {}' })
  t.notMatch(got[3].prelude, /const c/)
  t.same(preludeProblems({ doc: 'x', line: 1, code: '', prelude: "declare const vcpuDirtySource: unknown\nconst x = 1\nimport { y } from './vmm/index.js'" }), [
    'the prelude declares vcpuDirtySource, which the package exports: import it in the snippet instead',
    'the prelude runs code (const x = 1); it may only declare the embedder\'s objects',
    "the prelude imports './vmm/index.js', which is not the package",
  ])
  t.equal(relative(ROOT, VDIR), join('tests', 'docs', '.snippets'))
})
