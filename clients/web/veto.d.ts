// Types for veto.js (the Veto web client). See README.md.

/** The authority's token response (POST /v1/sessions, POST /v1/token). */
export interface TokenResponse {
  access_token: string;
  token_type?: string;
  expires_in: number;
  refresh_token: string;
  session_id?: string;
  home_region?: string;
}

/** Why the session ended, given to onLogout once in each tab that held it. */
export interface LogoutInfo {
  /** "logout" (logout() in some tab), "invalid_grant" (refresh refused: the session is gone),
   *  or the socket's reason: "logout" | "admin" | "refresh_reuse" | "upstream_logout" | "revoked". */
  reason: string;
  /** false only for logout() called by the app. */
  forced: boolean;
  source: "logout" | "refresh" | "socket";
  sessionId: string | null;
  kind?: "session" | "subject" | "token" | string;
  revokedAt?: number;
  originRegion?: string;
}

export interface VetoOptions {
  /** The authority's base URL, e.g. "https://auth.example.com". */
  authority: string;
  onLogout?: (info: LogoutInfo) => void;
  /** fetch implementation for the API and the authority (default: globalThis.fetch). */
  fetch?: typeof fetch;
  /** When set, tokens are also kept in localStorage under this key (they survive a reload). */
  storageKey?: string | null;
}

export interface Veto {
  setTokens(response: TokenResponse): void;
  /** fetch with the bearer; refreshes when due or on a 401 and retries once. */
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  /** Opens the forced-logout socket; returns a function that closes it. */
  connect(): () => void;
  /** POST /v1/logout; clears the tokens in every tab. */
  logout(): Promise<void>;
  /** Adds a logout callback; returns a function that removes it. */
  onLogout(cb: (info: LogoutInfo) => void): () => void;
  /** For adapters: the access token to send (refreshed first when due); null if logged out. */
  getAccessToken(): Promise<string | null>;
  /** For adapters: refresh unless `staleAccessToken` was already replaced; the current token. */
  refresh(staleAccessToken?: string): Promise<string>;
  readonly session: { sessionId: string | null; homeRegion: string | null; expiresAt: number } | null;
  /** Closes the socket and the cross-tab channel (tests, single-page teardown). */
  close(): void;
}

export class VetoError extends Error {
  code: string;
  status?: number;
  retryAfterMs?: number;
  constructor(code: string, message?: string, extra?: { status?: number; retryAfterMs?: number });
}

export function createVeto(options: VetoOptions): Veto;

// Pure logic, exported for tests and adapters.
export interface StoredTokens {
  access_token: string;
  refresh_token: string;
  issued_at: number;
  expires_at: number;
  session_id: string | null;
  home_region: string | null;
}
export const REFRESH_MARGIN_MS: number;
export const REFRESH_ATTEMPTS: number;
export const REFRESH_TIMEOUT_MS: number;
export const REFRESH_LINGER_MS: number;
export const STABLE_SOCKET_MS: number;
export const BACKOFF: Record<"network" | "restart" | "crowded", { base: number; cap: number }>;
export function tokensFromResponse(r: TokenResponse, now: number): StoredTokens;
export function refreshMargin(tokens: StoredTokens): number;
export function refreshDue(tokens: StoredTokens | null, now: number): boolean;
export function isExpired(tokens: StoredTokens | null, now: number): boolean;
export function backoffDelay(attempt: number, opts?: { base?: number; cap?: number; random?: () => number }): number;
export function closeAction(code: number): { action: "logout" | "refresh" | "reconnect"; backoff?: "network" | "restart" | "crowded" };
export function parseSocketMessage(data: unknown): { type: string; [k: string]: unknown } | null;
export function revokedInfo(m: unknown): Omit<LogoutInfo, "sessionId">;
export function parseRetryAfter(value: string | null | undefined, now: number): number | null;
export function socketUrl(authority: string): string;
export function createChannelLock(o: {
  id: string;
  post: (m: unknown) => void;
  now?: () => number;
  settleMs?: number;
  leaseMs?: number;
  timers?: { setTimeout: typeof setTimeout; clearTimeout: typeof clearTimeout };
}): { request<T>(name: string, fn: (contended: boolean) => Promise<T> | T): Promise<T>; onMessage(m: unknown): void };
export function createTabLock(o: { locks?: unknown; channelLock?: unknown }): {
  request<T>(name: string, fn: (contended: boolean) => Promise<T> | T): Promise<T>;
  onMessage(m: unknown): void;
};
export function createClient(options: VetoOptions, deps?: Record<string, unknown>): Veto;
