// Type-checked usage of veto.d.ts and the interceptor (not an app: `tsc --noEmit` only).
import { provideHttpClient, withInterceptors } from "@angular/common/http";
import { ApplicationConfig } from "@angular/core";
import { createVeto, LogoutInfo } from "../veto.js";
import { VETO, VETO_API, vetoInterceptor } from "./veto.interceptor";

const veto = createVeto({
  authority: "https://auth.example.com",
  onLogout: (info: LogoutInfo) => {
    if (info.forced) location.assign("/login?reason=" + encodeURIComponent(info.reason));
  },
});

export async function login(user: string, password: string): Promise<void> {
  const r = await fetch("/login", { method: "POST", body: new URLSearchParams({ user, password }) });
  if (!r.ok) throw new Error("login failed");
  veto.setTokens(await r.json());
  veto.connect();
}

export const appConfig: ApplicationConfig = {
  providers: [
    { provide: VETO, useValue: veto },
    { provide: VETO_API, useValue: (url: string) => url.startsWith("/api/") },
    provideHttpClient(withInterceptors([vetoInterceptor])),
  ],
};
