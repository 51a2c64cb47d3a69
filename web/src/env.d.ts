// Imports esbuild handles that TypeScript does not know: stylesheets
// (bundled into the page's one CSS file).
declare module "*.css";
