import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import '@mojavox/notify-react/styles.css';

import { App } from './App';
import './app.css';

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
