// The farm's gRPC services, called through gRPC-Web on the control plane's
// own port: the same services and methods grpcurl uses, no REST API.
//
// The token (when the control plane has tokens) lives in sessionStorage,
// is sent as `authorization: Bearer …`, and never appears in a URL.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { DescService } from "@bufbuild/protobuf";

import { ControlPlane } from "../gen/farm/v1/control_plane_pb";
import { Discovery } from "../gen/farm/v1/discovery_pb";
import { Farm } from "../gen/farm/v1/farm_pb";
import { Metrics } from "../gen/farm/v1/metrics_pb";

const TOKEN_KEY = "farm.token";

/**
 * Where the control plane is: the page's own origin, unless the bundle
 * was built for a page served elsewhere (`npm run dev`), which sets
 * `FARM_API` at build time.
 */
declare const FARM_API: string;
const baseUrl = typeof FARM_API === "string" && FARM_API !== "" ? FARM_API : location.origin;

/** The token this tab signed in with, if any. */
export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value: string | null): void {
  if (value === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, value);
}

const bearer: Interceptor = (next) => async (request) => {
  const current = token();
  if (current !== null) request.header.set("authorization", `Bearer ${current}`);
  return next(request);
};

const transport = createGrpcWebTransport({
  baseUrl,
  useBinaryFormat: true,
  interceptors: [bearer],
});

/** A client of `service` on the control plane, with this tab's token. */
export function client<T extends DescService>(service: T): Client<T> {
  return createClient(service, transport);
}

/**
 * The services every section uses. The configuration, load test and
 * catalog sections make their own clients (`client`): their code, and
 * their services' descriptions, load only when they are first shown.
 */
export const api = {
  controlPlane: client(ControlPlane),
  discovery: client(Discovery),
  farm: client(Farm),
  metrics: client(Metrics),
};

/** The gRPC code of a failed call (UNKNOWN for anything that is not one). */
export function codeOf(error: unknown): Code {
  return ConnectError.from(error).code;
}

/** Whether `error` is the abort of a call this page cancelled itself. */
export function cancelled(error: unknown): boolean {
  return ConnectError.from(error).code === Code.Canceled;
}

const CODE_WORDS: Partial<Record<Code, string>> = {
  [Code.InvalidArgument]: "The request was refused as invalid",
  [Code.NotFound]: "Not found",
  [Code.AlreadyExists]: "It already exists",
  [Code.PermissionDenied]: "Your token's role may not do this",
  [Code.Unauthenticated]: "The control plane needs a valid token",
  [Code.ResourceExhausted]: "The control plane is busy",
  [Code.FailedPrecondition]: "Not possible in the current state",
  [Code.Aborted]: "It changed meanwhile",
  [Code.Unavailable]: "The control plane cannot be reached",
  [Code.DeadlineExceeded]: "It took too long",
  [Code.Unimplemented]: "This control plane does not offer it",
  [Code.Internal]: "The control plane failed",
  [Code.Canceled]: "Cancelled",
};

/**
 * A failed call in words a person understands: what kind of failure, then
 * the control plane's own explanation, e.g. "Not possible in the current
 * state: node n7 is not running".
 */
export function describe(error: unknown): string {
  const e = ConnectError.from(error);
  const detail = e.rawMessage.trim();
  // fetch itself failed: nothing answered (refused, reset, no route).
  if (e.code === Code.Unknown && /network|fetch/i.test(detail)) {
    return `${CODE_WORDS[Code.Unavailable]} (${detail})`;
  }
  const words = CODE_WORDS[e.code] ?? "The call failed";
  return detail ? `${words}: ${detail}` : words;
}
