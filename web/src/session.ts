// Who this page is to the control plane: its role decides which actions are
// offered, and a viewer sees each action disabled with the reason.

import { type ControlPlaneStatus, Role } from "../gen/farm/v1/control_plane_pb";

export class Session {
  constructor(readonly status: ControlPlaneStatus) {}

  /** Whether the page may change the farm (admin, or no tokens at all). */
  get canAct(): boolean {
    return this.status.role === Role.ADMIN;
  }

  /** Why actions are disabled, for their tooltips and notes. */
  get whyNot(): string {
    return this.canAct ? "" : `Signed in as ${this.roleName}: only an admin token may change the farm`;
  }

  get roleName(): string {
    switch (this.status.role) {
      case Role.ADMIN:
        return "admin";
      case Role.NODE:
        return "node";
      case Role.VIEWER:
        return "viewer";
      default:
        return "unknown role";
    }
  }

  /** Marks `button` (or any control) as unavailable to this role. */
  guard<T extends HTMLButtonElement | HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement>(control: T): T {
    if (!this.canAct) {
      control.disabled = true;
      control.title = this.whyNot;
    }
    return control;
  }
}
