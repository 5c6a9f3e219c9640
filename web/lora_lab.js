// LoRA Lab front-end extension. The live training chart comes in a later issue; for now this only
// registers the extension so ComfyUI serves the pack's web folder.
import { app } from "../../scripts/app.js";

app.registerExtension({ name: "LoRALab" });
