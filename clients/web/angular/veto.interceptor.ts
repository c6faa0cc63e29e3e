// Angular HttpClient integration of the Veto web client (functional interceptor, Angular 15+).
//
//   // app.config.ts
//   import { provideHttpClient, withInterceptors } from "@angular/common/http";
//   import { createVeto } from "veto-web-client/veto.js";   // or a path to clients/web/veto.js
//   import { VETO, VETO_API, vetoInterceptor } from "./veto.interceptor";
//   const veto = createVeto({ authority: "https://auth.example.com", onLogout: () => location.assign("/login") });
//   export const appConfig = {
//     providers: [
//       { provide: VETO, useValue: veto },
//       { provide: VETO_API, useValue: (url: string) => url.startsWith("/api/") },
//       provideHttpClient(withInterceptors([vetoInterceptor])),
//     ],
//   };
//
// The bearer goes only to URLs that VETO_API accepts (default: same-origin relative URLs), so a
// token never reaches a third-party host. On a 401 the interceptor refreshes once (single-flight
// across tabs, in veto.js) and retries the request once; a refresh refused with invalid_grant
// has already logged every tab out (onLogout), and the original 401 is passed on.
import { HttpErrorResponse, HttpEvent, HttpHandlerFn, HttpInterceptorFn, HttpRequest } from "@angular/common/http";
import { InjectionToken, inject } from "@angular/core";
import { Observable, catchError, from, switchMap, throwError } from "rxjs";
import type { Veto } from "../veto.js";
import { VetoError } from "../veto.js";

/** The client created with createVeto(). */
export const VETO = new InjectionToken<Veto>("veto client");

/** Which request URLs get the bearer. Default: relative URLs (the app's own origin). */
export const VETO_API = new InjectionToken<(url: string) => boolean>("veto api urls", {
  providedIn: "root",
  factory: () => (url: string) => !/^[a-z][a-z0-9+.-]*:/i.test(url) && !url.startsWith("//"),
});

function withBearer(req: HttpRequest<unknown>, token: string): HttpRequest<unknown> {
  return req.clone({ setHeaders: { Authorization: `Bearer ${token}` } });
}

export const vetoInterceptor: HttpInterceptorFn = (
  req: HttpRequest<unknown>,
  next: HttpHandlerFn,
): Observable<HttpEvent<unknown>> => {
  const veto = inject(VETO);
  const isApi = inject(VETO_API);
  if (!isApi(req.url) || req.headers.has("Authorization")) return next(req);
  return from(veto.getAccessToken()).pipe(
    switchMap((token) => {
      if (!token) return next(req);
      return next(withBearer(req, token)).pipe(
        catchError((err: unknown) => {
          if (!(err instanceof HttpErrorResponse) || err.status !== 401) return throwError(() => err);
          return from(veto.refresh(token)).pipe(
            catchError((e: unknown) =>
              // the session is gone (every tab was told) or there is none: pass the 401 on
              e instanceof VetoError && (e.code === "invalid_grant" || e.code === "no_session")
                ? throwError(() => err)
                : throwError(() => e),
            ),
            switchMap((fresh) => next(withBearer(req, fresh))),
          );
        }),
      );
    }),
  );
};
